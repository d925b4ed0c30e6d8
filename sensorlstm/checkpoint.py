"""Pre-trained weights in, training checkpoints out and back.

Loading pre-trained weights (:func:`load_pretrained`):

- Sources: a ``.pt``/``.pth`` state dict, read with ``torch.load(weights_only=True)`` so no
  arbitrary object is ever unpickled; a ``.safetensors`` file; or a state dict already in memory.
  A ``models:/`` URI is resolved to a weights file by ``tasks/registry.py`` before it gets here.
- Keys written by other code are mapped onto this model's names: ``rnn.``/``encoder.`` ->
  ``lstm.``, ``fc.``/``linear.``/``decoder.`` -> ``head.``, and the ``module.`` (DDP) and
  ``_orig_mod.`` (``torch.compile``) prefixes are dropped. Extra mappings go in ``key_map``.
- Reused as is: every tensor whose (mapped) name and shape match. The LSTM must match exactly;
  a mismatch is an error naming the tensor and both shapes (a fleet with another channel count
  builds the model with ``base_inputs=<pre-trained channel count>`` to get an input adapter).
  A head of another size (another number of target channels, or a pooling head) is newly
  initialised, as is the input adapter.
- :func:`build_fleet_model` does all of that from a weights file and the ``model`` config: it
  reads the LSTM's shape off the weights, adds the adapter when the channel counts differ, builds
  the configured head and loads what fits. The Prefect task and the torchrun entry both use it.

Training checkpoints (:func:`save_training_checkpoint` / :func:`load_training_checkpoint`) hold
only tensors, numbers, strings, lists and dicts, so they too load with ``weights_only=True``.
They are written to a temporary file and renamed, so a process killed while writing leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sensorlstm.config import ModelConfig
from sensorlstm.model import LSTMForecaster

logger = logging.getLogger(__name__)

DEFAULT_KEY_MAP: dict[str, str] = {
    "module.": "",
    "_orig_mod.": "",
    "rnn.": "lstm.",
    "encoder.": "lstm.",
    "fc.": "head.",
    "linear.": "head.",
    "decoder.": "head.",
}
REQUIRED_PREFIXES = ("lstm.",)
CHECKPOINT_FILE = "last.pt"


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each tensor.

    Attributes:
        reused: model tensors loaded unchanged from the checkpoint (under the same name).
        adapted: model tensors loaded from a differently named checkpoint key (key mapping).
        new: model tensors left newly initialised (input adapter, a head of another size).
        ignored: checkpoint keys the model has no use for.
    """

    reused: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def pretrained_names(self) -> set[str]:
        """Parameter names that carry pre-trained values (lower learning rate, frozen first)."""
        return set(self.reused) | set(self.adapted)

    def __str__(self) -> str:
        return (
            f"reused {len(self.reused)} tensors, adapted {len(self.adapted)} (renamed), "
            f"newly initialised {self.new or 'none'}, ignored {self.ignored or 'none'}"
        )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.pt``/``.pth`` (weights only) or ``.safetensors``.

    A ``.pt`` file holding ``{"state_dict": ...}`` or ``{"model": ...}`` (a training checkpoint)
    is unwrapped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown suffix, or the file holds something other than named tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained weights {path} do not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if suffix not in (".pt", ".pth", ".bin"):
        raise ValueError(
            f"cannot read weights from {path}: expected a .pt/.pth state dict or a .safetensors "
            f"file, got suffix {suffix!r}"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise ValueError(
            f"{path} is not a plain state dict loadable with weights_only=True ({error}); "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from error
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    return _as_tensor_dict(loaded, str(path))


def map_keys(state: Mapping[str, Tensor], key_map: Mapping[str, str] | None = None) -> dict:
    """Rename checkpoint keys by prefix (``DEFAULT_KEY_MAP`` plus ``key_map``, applied in order).

    Returns ``{new_name: (original_name, tensor)}``.
    """
    rules = {**DEFAULT_KEY_MAP, **(key_map or {})}
    mapped: dict[str, tuple[str, Tensor]] = {}
    for original, tensor in state.items():
        name = original
        for old, new in rules.items():
            if name.startswith(old):
                name = new + name[len(old) :]
        if name in mapped:
            raise ValueError(
                f"checkpoint keys {mapped[name][0]!r} and {original!r} both map to {name!r}; "
                "pass a key_map that tells them apart"
            )
        mapped[name] = (original, tensor)
    return mapped


def load_pretrained(
    model: nn.Module,
    source: str | Path | Mapping[str, Tensor],
    *,
    key_map: Mapping[str, str] | None = None,
) -> LoadReport:
    """Copy pre-trained weights into ``model`` where names and shapes allow.

    Args:
        model: the fleet's model (an :class:`~sensorlstm.model.LSTMForecaster`), already built
            with the right ``base_inputs`` and head.
        source: a weights file path or a state dict.
        key_map: extra ``{checkpoint_prefix: model_prefix}`` renames.

    Returns:
        A :class:`LoadReport`; it is also logged. The reused names are stored on the model as
        ``model.pretrained_names`` so :func:`sensorlstm.train.fine_tune` can find them.

    Raises:
        ValueError: an LSTM tensor has another shape than the model's (the message names the
            tensor, both shapes and the fix), or the checkpoint has no LSTM weights at all.
    """
    origin = str(source) if isinstance(source, str | Path) else "the given state dict"
    if isinstance(source, str | Path):
        state = read_state_dict(source)
    else:
        state = _as_tensor_dict(source, origin)
    mapped = map_keys(state, key_map)
    own = model.state_dict()
    if not any(name.startswith(REQUIRED_PREFIXES) for name in mapped):
        raise ValueError(
            f"{origin} holds no LSTM weights (keys {sorted(state)[:6]}...); expected keys such as "
            "lstm.weight_ih_l0 or rnn.weight_ih_l0; pass key_map={'<prefix>.': 'lstm.'}"
        )

    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for name, target in own.items():
        if name not in mapped:
            report.new.append(name)
            continue
        original, tensor = mapped[name]
        if tuple(tensor.shape) != tuple(target.shape):
            if name.startswith(REQUIRED_PREFIXES):
                raise ValueError(_shape_error(name, original, tensor, target, origin))
            logger.info(
                "%s: pre-trained shape %s != model shape %s, newly initialised",
                name,
                tuple(tensor.shape),
                tuple(target.shape),
            )
            report.new.append(name)
            continue
        to_load[name] = tensor.to(dtype=target.dtype)
        (report.reused if original == name else report.adapted).append(name)
    report.ignored = sorted(original for name, (original, _) in mapped.items() if name not in own)

    model.load_state_dict(to_load, strict=False)
    model.pretrained_names = report.pretrained_names  # type: ignore[assignment]
    logger.info("pre-trained weights from %s: %s", origin, report)
    return report


def infer_lstm_shape(
    state: Mapping[str, Tensor], key_map: Mapping[str, str] | None = None
) -> dict:
    """``{"base_inputs", "hidden_size", "num_layers"}`` of the LSTM in a state dict.

    Lets a caller build a model that fits pre-trained weights it only has as a file.

    Raises:
        ValueError: the state dict has no ``lstm.weight_ih_l0`` (after key mapping).
    """
    mapped = map_keys(state, key_map)
    if "lstm.weight_ih_l0" not in mapped:
        raise ValueError(
            f"no LSTM input weights (lstm.weight_ih_l0) among keys {sorted(state)[:6]}...; "
            "pass key_map={'<prefix>.': 'lstm.'}"
        )
    first = mapped["lstm.weight_ih_l0"][1]
    layers = sum(
        1 for name in mapped if name.startswith("lstm.weight_ih_l") and "reverse" not in name
    )
    return {
        "base_inputs": int(first.shape[1]),
        "hidden_size": int(first.shape[0] // 4),
        "num_layers": layers,
    }


def build_fleet_model(
    model_cfg: ModelConfig,
    n_inputs: int,
    n_outputs: int,
    base: str | Path | Mapping[str, Tensor] | None = None,
    *,
    seed: int | None = None,
    key_map: Mapping[str, str] | None = None,
) -> tuple[LSTMForecaster, LoadReport]:
    """The fleet's model, shaped after the pre-trained weights and loaded from them.

    The LSTM's input size, hidden size and layer count come from the weights themselves
    (:func:`infer_lstm_shape`), never from the config, so any base file fits: a fleet whose
    channel count differs from the base's gets an input adapter. Head kind, classes and dropout
    come from ``model_cfg``. Without ``base`` the model is built from ``model_cfg`` alone
    (training from scratch).

    Args:
        model_cfg: the ``model`` config section (``head``, ``num_classes``, ``dropout``, and
            ``hidden_size``/``num_layers`` when there is no base).
        n_inputs: channels the fleet's model reads.
        n_outputs: channels it forecasts (ignored by a pooling head).
        base: pre-trained weights (``.pt``/``.safetensors`` path or a state dict), or None.
        seed: seed for the newly initialised tensors (equal on every DDP rank); the global RNG
            is left as it was. None draws from the global RNG.
        key_map: extra checkpoint-key renames (see :func:`map_keys`).

    Returns:
        ``(model, report)``; ``report.pretrained_names`` (reused and renamed tensors) are the
        parameters to freeze first and train at the lower learning rate. Empty without a base.
    """
    state = None
    shape = {"hidden_size": model_cfg.hidden_size, "num_layers": model_cfg.num_layers}
    if base is not None:
        state = read_state_dict(base) if isinstance(base, str | Path) else base
        shape = infer_lstm_shape(state, key_map)
        for key in ("hidden_size", "num_layers"):
            if shape[key] != getattr(model_cfg, key):
                logger.info(
                    "model.%s=%d ignored: the pre-trained LSTM has %s=%d",
                    key,
                    getattr(model_cfg, key),
                    key,
                    shape[key],
                )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = LSTMForecaster(
            n_inputs,
            n_outputs,
            dropout=model_cfg.dropout,
            head=model_cfg.head,
            num_classes=model_cfg.num_classes,
            **shape,
        )
    if state is None:
        return model, LoadReport(new=sorted(model.state_dict()))
    return model, load_pretrained(model, state, key_map=key_map)


def _shape_error(name: str, original: str, tensor: Tensor, target: Tensor, origin: str) -> str:
    message = (
        f"pre-trained tensor {original!r} from {origin} has shape {tuple(tensor.shape)} but the "
        f"model's {name!r} has shape {tuple(target.shape)}"
    )
    if name == "lstm.weight_ih_l0" and tensor.shape[0] == target.shape[0]:
        message += (
            f"; the pre-trained model reads {tensor.shape[1]} channels: build the model with "
            f"base_inputs={tensor.shape[1]} to put an input adapter in front of it"
        )
    else:
        message += "; build the model with the pre-trained hidden_size and num_layers"
    return message


def _as_tensor_dict(loaded: Any, origin: str) -> dict[str, Tensor]:
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{origin} must hold a state dict (name -> tensor), got {type(loaded)}")
    bad = [k for k, v in loaded.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{origin} is not a state dict: entries {bad[:5]} are not tensors")
    return {str(k): v for k, v in loaded.items()}


# -- training checkpoints ----------------------------------------------------------------------


def save_training_checkpoint(directory: str | Path, checkpoint: Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` to ``directory/last.pt`` atomically (temp file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    partial = directory / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    torch.save(dict(checkpoint), partial)
    os.replace(partial, path)
    return path


def load_training_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None when there is none (a fresh run)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
