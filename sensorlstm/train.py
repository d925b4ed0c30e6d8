"""Fine-tuning the pre-trained forecaster with an exact masked loss; pre-training the base model.

One optimizer step of :func:`fine_tune`:

1. take ``accumulation_steps`` length-bucketed batches (the micro-batches);
2. count their real timesteps (summed over all ranks under DDP) *before* any backward pass;
3. run each micro-batch in windows of ``max_length`` steps (truncated BPTT, the LSTM state
   carried detached from window to window); each window's ``"sum"`` loss is divided by that
   total count and back-propagated at once, so memory holds one window's graph;
4. drop the gradients of frozen pre-trained parameters, clip, step, advance the schedule.

The loss of the step is therefore the exact mean over every real timestep it saw, whatever the
split into micro-batches, windows and ranks (see :mod:`sensorlstm.losses`). The counts are
summed over ranks by :func:`all_reduce_sum`, on the CPU where the process group has a CPU
backend (gloo, also beside NCCL) and on the GPU for a plain NCCL group.

The schedule: pre-trained parameters (those :func:`sensorlstm.checkpoint.load_pretrained` loaded)
are frozen for ``freeze_epochs`` and then train at ``lr * pretrained_lr_scale``; new ones (input
adapter, head) at ``lr``. The learning rate warms up linearly for ``warmup_steps`` optimizer
steps, then follows a cosine to 1% over the planned steps, or is halved when the validation loss
stops improving (``plateau``), or stays constant. AdamW with decoupled weight decay on weight
matrices only. Early stopping on the validation loss restores the best epoch's weights.

Every epoch a checkpoint (model, optimizer, schedule, sampler position, RNG states, history,
best weights) is written to ``checkpoint_dir``; a call that finds one there resumes after its
epoch, which is how a retried Prefect task continues a killed run.

A run resumes at an epoch boundary: a kill mid-epoch repeats that epoch's steps, from the
checkpointed RNG, sampler and optimizer state, so the result is the uninterrupted run's, bit for
bit on the CPU (``tests/test_resume.py``); only the repeated steps' time is lost.

Known shortcomings: under DDP the checkpoint holds rank 0's RNG states only, so after a resume
the other ranks' dropout streams differ from an uninterrupted run; and every rank evaluates the
whole validation set (identical results, duplicated work) instead of a shard.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sensorlstm.bucketing import LengthBucketSampler
from sensorlstm.checkpoint import load_training_checkpoint, save_training_checkpoint
from sensorlstm.collate import Batch, ForecastCollator, choose_packing, make_loader
from sensorlstm.config import BucketConfig, ModelConfig, PretrainConfig, TrainConfig
from sensorlstm.device import autocast, resolve_device
from sensorlstm.losses import masked_loss
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_MIN_COSINE_FACTOR = 0.01
_PLATEAU_FACTOR = 0.5
_PLATEAU_PATIENCE = 1


class TrainCallback(Protocol):
    """Receives progress reports; the Prefect/MLflow task implements it (the core does not)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Every ``train.log_every_steps`` optimizer steps: ``train/loss``, ``lr``."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch: the epoch's history row."""


@dataclass
class TrainResult:
    """What :func:`fine_tune` did.

    Attributes:
        history: one dict per epoch: ``epoch``, ``train/loss``, ``val/loss``, ``lr``,
            ``padding_efficiency``, ``epoch_seconds``, ``real_timesteps_per_s``, ``batches``,
            ``grad_norm`` (mean global gradient norm of the epoch's steps, before clipping).
        best_epoch: epoch whose weights the model holds now.
        best_val_loss: its validation loss.
        stopped_early: early stopping ended the run before ``train.epochs``.
        steps: optimizer steps taken (all epochs, including before a resume).
        resumed_from_epoch: the epoch a resumed run started at (after the checkpoint's), or
            None for a fresh run.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    steps: int = 0
    resumed_from_epoch: int | None = None


# -- schedule -----------------------------------------------------------------------------------


class WarmupSchedule:
    """Linear warm-up, then cosine / plateau / constant; sets every group's ``lr`` directly.

    Each parameter group keeps its own ``base_lr`` (so the pre-trained groups stay at their
    scaled rate); the schedule multiplies all of them by one factor.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        kind: str,
        warmup_steps: int,
        total_steps: int,
    ) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.steps = 0
        self.plateau_factor = 1.0
        self.plateau_best = math.inf
        self.plateau_bad = 0
        self._apply()

    def factor(self) -> float:
        """The current multiplier of every group's ``base_lr``."""
        warm = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min(max(self.steps - self.warmup_steps, 0) / span, 1.0)
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
            return warm * (_MIN_COSINE_FACTOR + (1.0 - _MIN_COSINE_FACTOR) * decay)
        if self.kind == "plateau":
            return warm * self.plateau_factor
        return warm

    def step(self) -> None:
        """After an optimizer step."""
        self.steps += 1
        self._apply()

    def epoch_end(self, val_loss: float) -> None:
        """Plateau: halve the rate after an epoch without improvement."""
        if self.kind != "plateau" or not math.isfinite(val_loss):
            return
        if val_loss < self.plateau_best:
            self.plateau_best, self.plateau_bad = val_loss, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad >= _PLATEAU_PATIENCE:
                self.plateau_factor *= _PLATEAU_FACTOR
                self.plateau_bad = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def state_dict(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "plateau_factor": self.plateau_factor,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.steps = int(state["steps"])
        self.plateau_factor = float(state["plateau_factor"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
        self._apply()


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, pretrained_names: set[str]
) -> torch.optim.AdamW:
    """AdamW with up to four groups: (pre-trained | new) x (weight decay | none).

    Pre-trained parameters get ``lr * pretrained_lr_scale``; biases and other 1-d parameters get
    no weight decay. Each group carries ``base_lr`` and ``pretrained`` for the schedule.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        key = (name in pretrained_names, parameter.ndim >= 2)
        groups.setdefault(key, []).append(parameter)
    param_groups = []
    for (pretrained, decay), params in sorted(groups.items()):
        base_lr = cfg.lr * (cfg.pretrained_lr_scale if pretrained else 1.0)
        param_groups.append(
            {
                "params": params,
                "lr": base_lr,
                "base_lr": base_lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "pretrained": pretrained,
            }
        )
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


# -- one step ------------------------------------------------------------------------------------


@dataclass
class StepStats:
    """Loss sum and real counts of one optimizer step on this rank."""

    loss_sum: float = 0.0
    denominator: int = 0
    real_timesteps: int = 0
    padded_timesteps: int = 0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device(backend: str, device: torch.device) -> torch.device:
    """Where a tensor must be for an all-reduce on a process group with ``backend``.

    A group with a CPU backend (``gloo``, ``mpi``, or ``cpu:gloo,cuda:nccl``) reduces CPU
    tensors; a GPU-only one (plain ``nccl``) rejects them, so they go to the training device.
    """
    cpu_capable = any(name in backend for name in ("gloo", "mpi", "cpu:"))
    return torch.device("cpu") if cpu_capable else device


def all_reduce_sum(values: Tensor, device: torch.device) -> Tensor:
    """``values`` (a CPU tensor) summed over all ranks, returned on the CPU.

    The bookkeeping counts (real timesteps, loss sums) live on the CPU; this moves them to
    where the process group can reduce them. A no-op outside DDP.
    """
    _, world = _world()
    if world == 1:
        return values
    moved = values.to(collective_device(str(dist.get_backend()), device))
    dist.all_reduce(moved)
    return moved.cpu()


def sequence_labels(batch: Batch) -> Tensor:
    """One class per recording: 1 when any target step of it is labelled anomalous, else 0.

    The data contract has per-step labels only; a per-recording label column (fault type) would
    replace this rule once ingest provides one.
    """
    if batch.labels is None:
        raise ValueError(
            "a pooling head needs labels, but the recordings have none; set "
            "data.columns.label or use model.head='forecast'"
        )
    labelled = torch.where(batch.mask, batch.labels.to(torch.int64), 0)
    return labelled.amax(dim=1)


def _micro_denominator(core: LSTMForecaster, batch: Batch) -> int:
    if core.is_sequence_head:
        return int((batch.lengths > 0).sum())
    return batch.real_timesteps * batch.targets.shape[-1]


def _window_loss(
    model: nn.Module,
    core: LSTMForecaster,
    window: Batch,
    state: tuple[Tensor, Tensor] | None,
    *,
    loss_kind: str,
    packed: bool,
    device: torch.device,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Summed loss of one window (or a whole batch for a pooling head) and the new state."""
    with autocast(device):
        prediction, state = model(window.inputs, window.lengths, state, packed=packed)
    if core.is_sequence_head:
        real = window.lengths.to(prediction.device) > 0
        labels = sequence_labels(window).to(prediction.device)
        loss = F.cross_entropy(prediction.float()[real], labels[real], reduction="sum")
    else:
        loss = masked_loss(prediction, window.targets, window.mask, loss_kind, "sum")
    return loss, state


def accumulate_gradients(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    loss_kind: str = "mse",
    max_length: int | None = None,
    packed: bool = False,
    device: torch.device | None = None,
) -> StepStats:
    """Forward and backward over ``batches`` (one optimizer step's micro-batches).

    Gradients are those of the exact mean loss over every real timestep of ``batches`` (on all
    ranks under DDP, where ``model`` is the DDP wrapper and only the last backward pass
    all-reduces). The optimizer is not touched.

    Args:
        model: an :class:`LSTMForecaster` or a DDP wrapper around one.
        batches: micro-batches already on ``device``.
        loss_kind: ``mse``, ``mae`` or ``huber`` (forecast head; pooling heads use cross entropy).
        max_length: window length for truncated BPTT; None runs each batch in one piece.
        packed: run the LSTM on packed sequences instead of padded + mask.
        device: where the batches are (for autocast); default the model's device.

    Returns:
        This rank's :class:`StepStats` (unscaled loss sum and its denominator).
    """
    core: LSTMForecaster = getattr(model, "module", model)
    device = device or next(core.parameters()).device
    _, world = _world()
    stats = StepStats()
    stats.denominator = sum(_micro_denominator(core, b) for b in batches)
    denominator = all_reduce_sum(
        torch.tensor(float(stats.denominator), dtype=torch.float64), device
    )
    # DDP averages gradients over ranks; scaling by world makes the result the global mean.
    scale = world / max(float(denominator), 1.0)

    windows: list[tuple[Batch, bool]] = []  # (window, starts a new recording batch)
    for batch in batches:
        stats.real_timesteps += batch.real_timesteps
        stats.padded_timesteps += batch.padded_timesteps
        if core.is_sequence_head or max_length is None:
            windows.append((batch, True))
        else:
            windows.extend((w, i == 0) for i, w in enumerate(batch.chunks(max_length)))

    state: tuple[Tensor, Tensor] | None = None
    for i, (window, fresh) in enumerate(windows):
        if fresh:
            state = None
        last = i == len(windows) - 1
        syncs = last or not hasattr(model, "no_sync")
        sync = contextlib.nullcontext() if syncs else model.no_sync()
        with sync:
            loss, state = _window_loss(
                model, core, window, state, loss_kind=loss_kind, packed=packed, device=device
            )
            (loss * scale).backward()
        state = (state[0].detach(), state[1].detach())
        stats.loss_sum += float(loss.detach())
    return stats


# -- evaluation ----------------------------------------------------------------------------------


def _loader(
    recordings: RecordingSet,
    input_channels: Sequence[int] | np.ndarray,
    target_channels: Sequence[int] | np.ndarray,
    bucket_cfg: BucketConfig,
    *,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> tuple[LengthBucketSampler, Iterable[Batch]]:
    pairs = np.maximum(recordings.lengths - 1, 0)
    sampler = LengthBucketSampler.from_config(
        pairs, bucket_cfg, seed=seed, num_replicas=world, rank=rank
    )
    collator = ForecastCollator(
        input_channels, target_channels, pad_to_multiple_of=bucket_cfg.pad_to_multiple_of
    )
    loader = make_loader(recordings, sampler, collator, num_workers, pin_memory)
    return sampler, loader


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    recordings: RecordingSet,
    *,
    input_channels: Sequence[int] | np.ndarray,
    target_channels: Sequence[int] | np.ndarray,
    loss: str = "mse",
    bucket_cfg: BucketConfig | None = None,
    max_length: int | None = None,
    packing: str = "auto",
    device: torch.device | str | None = None,
) -> float:
    """Masked loss over every real timestep of ``recordings`` (NaN for an empty set).

    Batches are length-sorted (no shuffle); the model is put in eval mode and left there.

    Args:
        model: an :class:`LSTMForecaster` (or DDP wrapper; its module is used).
        recordings: the (normalised) recordings.
        input_channels: column indices the model reads.
        target_channels: column indices it forecasts.
        loss: ``mse``, ``mae`` or ``huber``.
        bucket_cfg: batching (shuffle is turned off); default 32 recordings per batch.
        max_length: evaluate in windows of this many steps with the state carried.
        packing: ``auto``, ``packed`` or ``padded``.
        device: default the model's device.
    """
    core: LSTMForecaster = getattr(model, "module", model)
    device = resolve_device(device) if device is not None else next(core.parameters()).device
    if len(recordings) == 0:
        return math.nan
    cfg = (bucket_cfg or BucketConfig()).model_copy(update={"shuffle": False, "drop_last": False})
    _, loader = _loader(recordings, input_channels, target_channels, cfg, seed=0)
    packed = choose_packing(
        packing,  # type: ignore[arg-type]
        bidirectional=False,
        needs_final_state=False,
    )
    core.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        count += _micro_denominator(core, batch)
        if core.is_sequence_head or max_length is None:
            windows: Iterable[Batch] = [batch]
        else:
            windows = batch.chunks(max_length)
        state = None
        for window in windows:
            window_loss, state = _window_loss(
                core, core, window, state, loss_kind=loss, packed=packed, device=device
            )
            total += float(window_loss)
    return total / count if count else math.nan


# -- fine-tuning --------------------------------------------------------------------------------


def fine_tune(
    model: LSTMForecaster,
    train: RecordingSet,
    val: RecordingSet,
    *,
    input_channels: Sequence[int] | np.ndarray,
    target_channels: Sequence[int] | np.ndarray,
    train_cfg: TrainConfig,
    bucket_cfg: BucketConfig,
    checkpoint_dir: Path | str | None = None,
    callback: TrainCallback | None = None,
    device: torch.device | str | None = None,
    pretrained_names: set[str] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place; on return it holds the best epoch's weights.

    Runs distributed (DDP) when ``torch.distributed`` is initialised (see
    :mod:`sensorlstm.distributed`): each rank takes its share of the bucketed batches, the loss
    is normalised by the global real-timestep count, and only rank 0 logs, reports to
    ``callback`` and writes checkpoints.

    Args:
        model: the model, with pre-trained weights loaded.
        train: training recordings (normalised).
        val: validation recordings (early stopping; may be empty, then the training loss is
            used).
        input_channels: column indices of the model inputs.
        target_channels: column indices of the forecast targets.
        train_cfg: the ``train`` config section.
        bucket_cfg: the ``bucket`` config section.
        checkpoint_dir: where the per-epoch checkpoint goes; a checkpoint found there resumes.
        callback: progress receiver (MLflow metrics, Prefect artifact).
        device: overrides ``train_cfg.device``.
        pretrained_names: parameter names from the pre-trained model (frozen first, lower
            learning rate); None uses ``model.pretrained_names`` set by ``load_pretrained``, or
            none.

    Returns:
        A :class:`TrainResult`.
    """
    device = resolve_device(device if device is not None else train_cfg.device)
    rank, world = _world()
    if pretrained_names is None:
        pretrained_names = set(getattr(model, "pretrained_names", set()))
    if train_cfg.freeze_epochs and not pretrained_names:
        logger.warning("freeze_epochs=%d but no parameter is pre-trained", train_cfg.freeze_epochs)

    _seed_everything(train_cfg.seed + rank)
    model.to(device)
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler, loader = _loader(
        train,
        input_channels,
        target_channels,
        bucket_cfg,
        seed=train_cfg.seed,
        num_workers=train_cfg.num_workers,
        pin_memory=device.type == "cuda",
        rank=rank,
        world=world,
    )
    packed = choose_packing(train_cfg.packing, bidirectional=False, needs_final_state=False)
    optimizer = build_optimizer(model, train_cfg, pretrained_names)
    steps_per_epoch = math.ceil(len(sampler) / train_cfg.accumulation_steps)
    schedule = WarmupSchedule(
        optimizer,
        kind=train_cfg.scheduler,
        warmup_steps=train_cfg.warmup_steps,
        total_steps=steps_per_epoch * train_cfg.epochs,
    )
    frozen = [p for n, p in model.named_parameters() if n in pretrained_names]

    result = TrainResult()
    best_state: dict[str, Tensor] | None = None
    bad_epochs, start_epoch = 0, 0
    checkpoint = load_training_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        sampler.load_state_dict(checkpoint["sampler"])
        _set_rng_state(checkpoint["rng"])
        result.history = list(checkpoint["history"])
        result.best_epoch = int(checkpoint["best_epoch"])
        result.best_val_loss = float(checkpoint["best_val_loss"])
        result.stopped_early = bool(checkpoint["stopped_early"])
        result.steps = int(checkpoint["steps"])
        best_state = checkpoint["best_state"]
        bad_epochs = int(checkpoint["bad_epochs"])
        start_epoch = result.resumed_from_epoch = int(checkpoint["epoch"]) + 1
        if rank == 0:
            logger.info("resuming from %s after epoch %d", checkpoint_dir, start_epoch - 1)

    for epoch in range(start_epoch, train_cfg.epochs):
        if result.stopped_early:
            break
        frozen_now = epoch < train_cfg.freeze_epochs
        sampler.set_epoch(epoch)
        trained.train()
        started = time.perf_counter()
        totals = StepStats()
        batches = 0
        grad_norms: list[Tensor] = []
        progress = _progress(len(sampler), f"epoch {epoch}", enabled=rank == 0)
        for group in _groups(loader, train_cfg.accumulation_steps):
            group = [b.to(device, non_blocking=True) for b in group]
            stats = accumulate_gradients(
                trained,
                group,
                loss_kind=train_cfg.loss,
                max_length=train_cfg.max_length,
                packed=packed,
                device=device,
            )
            if frozen_now:
                for parameter in frozen:
                    parameter.grad = None
            grad_norms.append(_clip_gradients(model, train_cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            result.steps += 1
            batches += len(group)
            for name in ("loss_sum", "denominator", "real_timesteps", "padded_timesteps"):
                setattr(totals, name, getattr(totals, name) + getattr(stats, name))
            progress.update(len(group))
            log_now = result.steps % train_cfg.log_every_steps == 0
            if callback is not None and rank == 0 and log_now:
                step_loss = stats.loss_sum / max(stats.denominator, 1)
                callback.on_step(result.steps, {"train/loss": step_loss, "lr": _lr(optimizer)})
        progress.close()

        # Epoch metrics, summed over ranks; validation on the full set on every rank.
        # (loss_sum, denominator, real_timesteps, padded_timesteps), the StepStats fields.
        sums = all_reduce_sum(torch.tensor(astuple(totals), dtype=torch.float64), device)
        train_loss = float(sums[0] / sums[1].clamp(min=1))
        val_loss = evaluate_loss(
            model,
            val,
            input_channels=input_channels,
            target_channels=target_channels,
            loss=train_cfg.loss,
            bucket_cfg=bucket_cfg,
            max_length=train_cfg.max_length,
            packing=train_cfg.packing,
            device=device,
        )
        seconds = time.perf_counter() - started
        row = {
            "epoch": float(epoch),
            "train/loss": train_loss,
            "val/loss": val_loss,
            "lr": _lr(optimizer),
            "padding_efficiency": float(sums[2] / sums[3].clamp(min=1)),
            "epoch_seconds": seconds,
            "real_timesteps_per_s": float(sums[2]) / seconds if seconds > 0 else math.nan,
            "batches": float(batches),
            "grad_norm": float(torch.stack(grad_norms).mean()) if grad_norms else math.nan,
        }
        result.history.append(row)
        schedule.epoch_end(val_loss)

        # Early stopping on validation loss (training loss when there is no validation set).
        selection = val_loss if math.isfinite(val_loss) else train_loss
        if selection < result.best_val_loss:
            result.best_val_loss, result.best_epoch, bad_epochs = selection, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        patience = train_cfg.early_stopping_patience
        unfrozen = epoch + 1 >= train_cfg.freeze_epochs
        if patience is not None and bad_epochs >= patience and unfrozen:
            result.stopped_early = epoch + 1 < train_cfg.epochs
        if rank == 0:
            logger.info(
                "epoch %d/%d  train/loss %.4f  val/loss %.4f  lr %.2e  padding %.3f  %.1fs%s%s",
                epoch + 1,
                train_cfg.epochs,
                train_loss,
                val_loss,
                row["lr"],
                row["padding_efficiency"],
                seconds,
                "  (frozen)" if frozen_now and frozen else "",
                "  early stop" if result.stopped_early else "",
            )
        if checkpoint_dir is not None and rank == 0:
            save_training_checkpoint(
                checkpoint_dir,
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "sampler": sampler.state_dict(),
                    "rng": _rng_state(),
                    "history": result.history,
                    "best_state": best_state,
                    "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss,
                    "bad_epochs": bad_epochs,
                    "stopped_early": result.stopped_early,
                    "steps": result.steps,
                    "train_cfg": train_cfg.model_dump(mode="json"),
                },
            )
        if world > 1:
            dist.barrier()
        if callback is not None and rank == 0:
            callback.on_epoch_end(epoch, row)

    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def _clip_gradients(model: nn.Module, max_norm: float | None) -> Tensor:
    """Clip the global gradient norm to ``max_norm`` (when set); return the norm before.

    The norm is returned as a tensor (no device sync per step) for the epoch's ``grad_norm``,
    which shows a wrongly scaled gradient even where AdamW would hide it in the weights.
    """
    trainable = [p for p in model.parameters() if p.grad is not None]
    if not trainable:
        return torch.zeros((), device=next(model.parameters()).device)
    if max_norm is None:
        return nn.utils.get_total_norm([p.grad for p in trainable]).detach()
    return nn.utils.clip_grad_norm_(trainable, max_norm).detach()


def _groups(loader: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive groups of ``size`` batches (the last may be shorter)."""
    group: list[Batch] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of new parameters (of pre-trained ones when there are no new ones)."""
    groups = optimizer.param_groups
    new = [g["lr"] for g in groups if not g.get("pretrained")]
    return float(max(new or [g["lr"] for g in groups]))


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar on a terminal; nothing in logs, CI or a Prefect worker."""
    if not enabled or not sys.stderr.isatty():
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="batch", leave=False)


# -- RNG state -----------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a ``weights_only``-loadable form."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- pre-training -------------------------------------------------------------------------------


def cut_windows(recordings: RecordingSet, window: int) -> Tensor:
    """Non-overlapping windows of ``window`` rows from every recording, ``(N, window, C)``.

    A recording's tail shorter than a window is dropped, as is a recording shorter than one.
    """
    pieces = []
    for i in range(len(recordings)):
        values = recordings.recording(i)
        count = len(values) // window
        if count:
            pieces.append(values[: count * window].reshape(count, window, -1))
    if not pieces:
        raise ValueError(
            f"no recording has {window} rows, so no pre-training window can be cut; "
            f"lower pretrain.window (longest recording: {int(recordings.lengths.max(initial=0))})"
        )
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32))


def pretrain(
    train: RecordingSet,
    *,
    cfg: PretrainConfig,
    model_cfg: ModelConfig,
    device: torch.device | str | None = None,
) -> LSTMForecaster:
    """Train the base next-step forecaster on fixed windows, as a typical pre-trained model was.

    Every recording is cut into non-overlapping windows of ``cfg.window`` rows; the model reads
    rows ``0..window-2`` of each and forecasts rows ``1..window-1`` of every channel, with plain
    MSE and Adam. No padding is involved: all windows have the same length.

    Args:
        train: the pre-training corpus (normalised).
        cfg: the ``pretrain`` section (window, epochs, batch size, lr, seed).
        model_cfg: the ``model`` section (hidden size, layers, dropout).
        device: default ``"auto"``.

    Returns:
        The base model (forecast head over all channels), in eval mode, on the CPU.
    """
    device = resolve_device(device if device is not None else "auto")
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    windows = cut_windows(train, cfg.window)
    channels = train.n_channels
    model = LSTMForecaster(
        channels,
        channels,
        hidden_size=model_cfg.hidden_size,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(windows), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(windows), cfg.batch_size):
            chunk = windows[order[start : start + cfg.batch_size]].to(device)
            with autocast(device):
                prediction, _ = model(chunk[:, :-1])
            loss = F.mse_loss(prediction.float(), chunk[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chunk)
            count += len(chunk)
        logger.info(
            "pretrain epoch %d/%d  loss %.4f  (%d windows of %d)",
            epoch + 1,
            cfg.epochs,
            total / count,
            len(windows),
            cfg.window,
        )
    return model.cpu().eval()
