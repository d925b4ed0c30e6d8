"""Where the model runs: CUDA when present, then Apple MPS, then CPU; one code path for all.

On CUDA the forward pass runs under bf16 autocast (cuDNN's LSTM kernels, float32 master weights
and float32 loss); MPS and CPU run in float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The device for ``spec``: ``"auto"`` picks CUDA, then MPS, then CPU.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a device.

    Raises:
        ValueError: the requested device is not available here (the message says what is).
    """
    if isinstance(spec, torch.device):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(
            f"unknown device {spec!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} requested but CUDA is not available here; "
                "use 'auto' (falls back to the CPU) or 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} GPUs are "
                f"visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    if device.type == "mps" and not _mps_available():
        raise ValueError(
            f"device {spec!r} requested but MPS is not available here; use 'auto' or 'cpu'"
        )
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on CUDA, None (plain float32) elsewhere.

    bf16 keeps float32's exponent range, so no loss scaling is needed; MPS and CPU autocast
    would mostly add casts around kernels that gain little from them, so they run float32.
    """
    return torch.bfloat16 if device.type == "cuda" else None


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Autocast to :func:`autocast_dtype` on CUDA, nothing elsewhere (or when not enabled)."""
    dtype = autocast_dtype(device)
    if enabled and dtype is not None:
        with torch.autocast(device.type, dtype=dtype):
            yield
    else:
        yield


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated memory since the last reset on CUDA; None on other devices."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
