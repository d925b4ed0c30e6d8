"""Device choice for training: resolve_device, the DDP rank device and backend, autocast."""

from __future__ import annotations

import pytest
import torch

from sensorlstm import device as device_module
from sensorlstm.device import autocast, autocast_dtype, resolve_device
from sensorlstm.distributed import process_group_backend, rank_device
from sensorlstm.train import collective_device


@pytest.fixture
def no_accelerator(monkeypatch):
    """A machine with neither CUDA nor MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that reports two CUDA devices (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_and_explicit_devices_are_taken_as_given():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    explicit = torch.device("cuda", 3)  # a device object is an override: not checked
    assert resolve_device(explicit) is explicit


def test_auto_falls_back_to_cpu_without_cuda_or_mps(no_accelerator):
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda", r"'cuda' requested but CUDA is not available.*'auto'.*'cpu'"),
        ("cuda:1", "CUDA is not available"),
        ("mps", r"'mps' requested but MPS is not available.*'cpu'"),
        ("gpu", r"unknown device 'gpu': expected 'auto', 'cpu', 'cuda'"),
    ],
)
def test_unavailable_device_is_a_clear_error(no_accelerator, spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(spec)


def test_gpu_index_beyond_the_visible_ones_is_an_error(two_gpus):
    with pytest.raises(ValueError, match=r"only 2 GPUs are visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_bf16_autocast_only_on_cuda():
    assert autocast_dtype(torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("mps")) is None


def test_cpu_autocast_context_leaves_float32():
    layer = torch.nn.Linear(4, 3)
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        out = layer(torch.randn(2, 4))
    assert out.dtype is torch.float32


def test_ddp_rank_device_follows_train_device(two_gpus):
    assert rank_device("auto", 1) == torch.device("cuda", 1)
    assert rank_device("cuda", 0) == torch.device("cuda", 0)
    assert rank_device("cpu", 1) == torch.device("cpu")  # --device cpu is respected on GPUs
    assert rank_device("cuda:0", 1) == torch.device("cuda", 0)  # explicit: as given
    with pytest.raises(ValueError, match=r"local rank 2 .* only 2 are visible"):
        rank_device("auto", 2)


def test_ddp_rank_device_without_cuda(no_accelerator):
    assert rank_device("auto", 1) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        rank_device("cuda", 0)


def test_nccl_runs_beside_gloo_so_cpu_tensors_can_be_reduced():
    assert process_group_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(torch.device("cpu")) == "gloo"
    cuda = torch.device("cuda", 1)
    assert collective_device("cpu:gloo,cuda:nccl", cuda) == torch.device("cpu")
    assert collective_device("gloo", torch.device("cpu")) == torch.device("cpu")
    assert collective_device("nccl", cuda) == cuda  # a GPU-only group gets GPU tensors
