"""Device choice and deterministic mode scoped to one run."""

from __future__ import annotations

import os

import pytest
import torch

from roli.device import DeviceError, deterministic, device_name, pick_device


def test_auto_is_cpu_without_cuda_and_cuda_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu" and pick_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="no CUDA device is available; use auto or cpu"):
        pick_device("cuda")
    with pytest.raises(DeviceError, match="choose auto, cpu or cuda"):
        pick_device("tpu")


def test_device_name_records_the_cpu_capability():
    name = device_name(torch.device("cpu"))
    assert name.startswith("cpu (") and torch.backends.cpu.get_cpu_capability() in name


def test_deterministic_mode_is_scoped(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a missing kernel warns, never crashes a run
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set before CUDA would need it
        assert not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()  # nothing leaks into the next run of a sweep
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_mode_restored_after_an_error():
    with pytest.raises(RuntimeError, match="boom"), deterministic(True):
        raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_user_cublas_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
