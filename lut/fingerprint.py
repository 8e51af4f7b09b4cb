"""Device fingerprints: what a table was measured on, so it is not used on another machine.

A fingerprint is a flat dict. Its *identity* fields must match for a table to be used (the device
type and model, core count or GPU memory, driver and CUDA versions, compute capability, torch
version): a different value there means different kernels or different hardware. The other
fields (threads, clocks, power limit, temperature, load) are recorded to explain a table, not
compared: they move from run to run on the same machine.

GPU fields come from NVML via nvidia-ml-py (``import pynvml``), which is optional: without it
the fingerprint holds what torch reports and says ``"nvml": "unavailable"``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re

import torch

from lut.device import available_cores

__all__ = [
    "IDENTITY_FIELDS",
    "describe",
    "device_slug",
    "fingerprint",
    "foreign_fields",
    "gpu_state",
    "identity",
]

IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "cpu": ("type", "cpu_model", "cores", "machine", "torch"),
    "cuda": ("type", "gpu_name", "gpu_memory_mb", "compute_capability", "driver", "cuda",
             "torch"),
}


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _cpu_fingerprint(threads: int) -> dict:
    return {
        "type": "cpu",
        "cpu_model": _cpu_model(),
        "cores": available_cores(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
        "host_cores": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _nvml_read(index: int, read) -> dict:
    """``read(pynvml, handle)`` for GPU ``index`` inside one NVML session."""
    try:
        import pynvml  # from nvidia-ml-py (the `pynvml` wheel is deprecated)
    except ImportError:
        return {"nvml": "unavailable"}
    pynvml.nvmlInit()
    try:
        return read(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
    finally:
        pynvml.nvmlShutdown()


def gpu_state(index: int) -> dict:
    """What moves on a GPU between runs (clocks, temperature, power): read before and after."""
    return _nvml_read(index, lambda nv, h: {
        "temperature_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
        "sm_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
        "mem_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
        "power_limit_w": nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
    })


def _nvml_static(index: int) -> dict:
    def read(nv, h) -> dict:
        driver = nv.nvmlSystemGetDriverVersion()
        return {
            "nvml": "ok",
            "driver": driver.decode() if isinstance(driver, bytes) else driver,
            "nvml_memory_mb": nv.nvmlDeviceGetMemoryInfo(h).total // 2**20,
            "sm_clock_max_mhz": nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
            "mem_clock_max_mhz": nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM),
        }
    return _nvml_read(index, read)


def _cuda_fingerprint(index: int, threads: int) -> dict:
    props = torch.cuda.get_device_properties(index)
    fp = {
        "type": "cuda",
        "gpu_name": props.name,
        "gpu_memory_mb": props.total_memory // 2**20,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "threads": threads,
        "cpu_model": _cpu_model(),
    }
    fp.update(_nvml_static(index))
    fp.update(gpu_state(index))
    return fp


def fingerprint(device: torch.device, threads: int) -> dict:
    """The fingerprint of ``device`` on this machine now."""
    if device.type == "cuda":
        return _cuda_fingerprint(device.index or 0, threads)
    return _cpu_fingerprint(threads)


def identity(fp: dict) -> dict:
    """The fields that must match for a table to be used."""
    fields = IDENTITY_FIELDS.get(fp.get("type"), ("type",))
    return {k: fp.get(k) for k in fields}


def foreign_fields(table_fp: dict, here_fp: dict) -> list[str]:
    """Identity fields whose values differ ([] when the table belongs to this machine)."""
    a, b = identity(table_fp), identity(here_fp)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def describe(fp: dict) -> str:
    """One line, e.g. ``cpu 'AMD EPYC' 2 cores x86_64 torch 2.13.0+cpu``."""
    ident = identity(fp)
    return " ".join(f"{k}={v}" for k, v in ident.items())


def device_slug(fp: dict) -> str:
    """A folder name for this device: readable part plus a hash of the identity fields."""
    ident = identity(fp)
    name = ident.get("gpu_name") or ident.get("cpu_model") or "device"
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32] or "device"
    if fp.get("type") == "cpu":
        readable = f"cpu-{readable}-{ident.get('cores')}c"
    else:
        readable = f"cuda-{readable}"
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"
