"""The GPU fingerprint's NVML reads, against a stand-in for nvidia-ml-py (no GPU here)."""

import types

import pytest

from lut.fingerprint import _nvml_static, gpu_state


@pytest.fixture
def fake_nvml(monkeypatch):
    calls = []
    nv = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlDeviceGetTemperature=lambda h, kind: 51,
        nvmlDeviceGetClockInfo=lambda h, clock: {1: 1755, 2: 2619}[clock],
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
        nvmlSystemGetDriverVersion=lambda: b"580.65",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * 2**30),
        nvmlDeviceGetMaxClockInfo=lambda h, clock: {1: 1980, 2: 2619}[clock],
    )
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nv)
    return calls


def test_gpu_state_reads_clocks_temperature_power(fake_nvml):
    assert gpu_state(0) == {"temperature_c": 51, "sm_clock_mhz": 1755, "mem_clock_mhz": 2619,
                            "power_limit_w": 700.0}
    assert fake_nvml == ["init", "shutdown"]


def test_static_fingerprint_decodes_driver_and_sizes(fake_nvml):
    fp = _nvml_static(0)
    assert fp == {"nvml": "ok", "driver": "580.65", "nvml_memory_mb": 81920,
                  "sm_clock_max_mhz": 1980, "mem_clock_max_mhz": 2619}


def test_without_nvidia_ml_py_the_fingerprint_says_so(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # import raises ImportError
    assert gpu_state(0) == {"nvml": "unavailable"}
