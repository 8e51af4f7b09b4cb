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


# -- CPU identity ---------------------------------------------------------------------------

ZEN2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
stepping\t: 0
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c hypervisor

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
stepping\t: 0
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c hypervisor
"""


def cpu_fp(cpuinfo: str, **overrides) -> dict:
    from lut.fingerprint import cpu_identity

    return {"type": "cpu", **cpu_identity(cpuinfo, {"l1d": 32, "l2": 512, "l3": 16384}),
            "cores": 2, "machine": "x86_64", "aten_isa": "AVX2", "onednn_isa": "Intel AVX2",
            "torch": "2.13.0+cpu", "threads": 1, "loadavg_1m": 0.5, **overrides}


def test_cpu_identity_reads_the_first_processor():
    fp = cpu_fp(ZEN2)
    assert (fp["vendor"], fp["cpu_family"], fp["cpu_model_number"], fp["stepping"],
            fp["cpu_model"]) == ("AuthenticAMD", "23", "49", "0", "AMD EPYC")
    assert fp["isa"] == "sse4_2 avx avx2 fma f16c"  # kernel-relevant flags only
    assert fp["cache_kb"] == {"l1d": 32, "l2": 512, "l3": 16384}


@pytest.mark.parametrize("change", [
    ("cpu family\t: 23", "cpu family\t: 25"),
    ("model\t\t: 49", "model\t\t: 1"),
    ("avx2 fma", "avx2 avx512f avx512bw avx512vl fma"),
])
def test_cpus_differing_only_in_family_model_or_avx512_get_different_slugs(change):
    from lut.fingerprint import device_slug, foreign_fields

    a, b = cpu_fp(ZEN2), cpu_fp(ZEN2.replace(*change))
    assert a["cpu_model"] == b["cpu_model"] == "AMD EPYC"  # the name alone cannot tell them apart
    assert device_slug(a) != device_slug(b)
    assert foreign_fields(a, b)


def test_slug_ignores_what_moves_between_runs():
    from lut.fingerprint import device_slug, foreign_fields

    a, b = cpu_fp(ZEN2), cpu_fp(ZEN2, threads=4, loadavg_1m=7.0)
    assert device_slug(a) == device_slug(b) and foreign_fields(a, b) == []
    assert device_slug(a).startswith("cpu-amd-epyc-f23m49s0-2c-")
    assert device_slug(cpu_fp(ZEN2, onednn_isa="Intel AVX-512")) != device_slug(a)
    assert device_slug(cpu_fp(ZEN2, cache_kb={"l2": 1024})) != device_slug(a)


def test_this_machine_fingerprint_has_the_identity_fields():
    import torch

    from lut.fingerprint import IDENTITY_FIELDS, fingerprint

    fp = fingerprint(torch.device("cpu"), 1)
    assert set(IDENTITY_FIELDS["cpu"]) <= set(fp)
    assert fp["aten_isa"] == torch.backends.cpu.get_cpu_capability()
    assert fp["onednn_isa"]  # e.g. "Intel AVX2"; "unknown" only where oneDNN says nothing
