"""Device fingerprints: what a table was measured on, so it is not used on another machine.

A fingerprint is a flat dict. Its *identity* fields must match for a table to be used: a
different value there means other hardware or other kernels. On a CPU they are the vendor,
family, model and stepping (a model *name* such as "AMD EPYC" is shared by CPUs 2.4x apart in
speed), the instruction-set extensions that change kernel choice (AVX2, FMA, the AVX-512
variants, VNNI, AMX), the cache sizes, the core count, the ISA that ATen dispatches to
(``torch.backends.cpu.get_cpu_capability``) and the one oneDNN reports for its convolutions, and
the torch version. On a GPU: name, memory, compute capability, driver, CUDA and torch versions.
A table measured in ONNX Runtime (``lut.runtimes``) adds the runtime, its version, the
provider, the session options and the opset, identity fields too (an eager table, and every
table from before runtimes, reads as ``runtime = "torch"`` with the others None); the folder
name (``device_slug``) comes from the device's fields alone, so both runtimes' tables of a device
sit side by side. The other fields (threads, clocks, power limit, temperature, load) are
recorded to explain a table, not compared: they move from run to run on the same machine. That
same identity can still run at another speed (a throttled or shared host): the speed probe in
``lut.probe`` checks that.

GPU fields come from NVML via nvidia-ml-py (``import pynvml``), which is optional: without it
the fingerprint holds what torch reports and says ``"nvml": "unavailable"``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import torch

from lut.device import available_cores

__all__ = [
    "CPU_ISA_FLAGS",
    "IDENTITY_FIELDS",
    "RUNTIME_FIELDS",
    "cpu_identity",
    "describe",
    "describe_differences",
    "device_identity",
    "device_slug",
    "fingerprint",
    "foreign_fields",
    "gpu_state",
    "identity",
]

IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "cpu": ("type", "vendor", "cpu_family", "cpu_model_number", "stepping", "cpu_model",
            "isa", "cache_kb", "cores", "machine", "aten_isa", "onednn_isa", "torch"),
    "cuda": ("type", "gpu_name", "gpu_memory_mb", "compute_capability", "driver", "cuda",
             "torch"),
}

# The runtime a table was measured in (``lut.runtimes``): identity fields too, with the values
# an eager table has (it stores none of them, as tables did before runtimes existed).
RUNTIME_FIELDS: dict[str, object] = {"runtime": "torch", "runtime_version": None,
                                     "provider": None, "session_options": None, "opset": None}

# /proc/cpuinfo flags that change which kernels oneDNN, MKL and ATen pick (x86), or the Arm
# extensions that do the same; the rest (virtualisation, security mitigations) do not.
CPU_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx512ifma", "avx512vbmi", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "asimd", "asimddp", "asimdhp", "sve", "sve2", "bf16", "i8mm", "sme",
)
_CPUINFO_FIELDS = {"vendor_id": "vendor", "cpu family": "cpu_family", "model": "cpu_model_number",
                   "stepping": "stepping", "model name": "cpu_model",
                   # Arm's names for the same things
                   "cpu implementer": "vendor", "cpu architecture": "cpu_family",
                   "cpu part": "cpu_model_number", "cpu variant": "stepping"}


def cpu_identity(cpuinfo: str, caches_kb: dict[str, int] | None = None) -> dict:
    """Vendor, family, model, stepping, model name and ISA flags of the first processor listed in
    ``cpuinfo`` (the text of ``/proc/cpuinfo``), plus ``caches_kb``; missing fields are None."""
    ident: dict = {v: None for v in _CPUINFO_FIELDS.values()}
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if not line.strip():
            if ident["vendor"] is not None or flags:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in _CPUINFO_FIELDS and ident[_CPUINFO_FIELDS[key]] is None:
            ident[_CPUINFO_FIELDS[key]] = value
    ident["isa"] = " ".join(f for f in CPU_ISA_FLAGS if f in flags)
    ident["cache_kb"] = dict(sorted((caches_kb or {}).items()))
    return ident


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cache_sizes_kb() -> dict[str, int]:
    """``{"l1d": 32, "l1i": 64, "l2": 512, "l3": 8192}`` for cpu0 from sysfs ({} elsewhere)."""
    sizes: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind = _read(f"{index}/level").strip(), _read(f"{index}/type").strip()
        m = re.fullmatch(r"(\d+)([KMG]?)", _read(f"{index}/size").strip())
        if not level or not m:
            continue
        kb = int(m[1]) * {"": 1, "K": 1, "M": 1024, "G": 1024**2}[m[2]]
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes[f"l{level}{suffix}"] = kb
    return sizes


@functools.lru_cache(maxsize=1)
def _onednn_isa() -> str:
    """The ISA oneDNN dispatches its CPU primitives to, from its verbose header (one tiny
    convolution with verbose output on, read from file descriptor 1); "unknown" if unreadable."""
    if not torch.backends.mkldnn.is_available():
        return "unavailable"
    libc = ctypes.CDLL(None)
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        return "unknown"
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), \
                        torch.no_grad():
                    x = torch.zeros(1, 32, 32, 32).contiguous(memory_format=torch.channels_last)
                    torch.nn.functional.conv2d(x, torch.zeros(32, 32, 3, 3))
            finally:
                libc.fflush(None)
                os.dup2(saved, 1)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
    except (OSError, RuntimeError, AttributeError):
        return "unknown"
    finally:
        os.close(saved)
    m = re.search(r"\binfo,cpu,isa:([^\n]+)", text)
    return m[1].strip() if m else "unknown"


@functools.lru_cache(maxsize=1)
def _cpu_identity_here() -> dict:
    ident = cpu_identity(_read("/proc/cpuinfo"), _cache_sizes_kb())
    if not ident["cpu_model"]:
        ident["cpu_model"] = platform.processor() or platform.machine() or "unknown cpu"
    with contextlib.suppress(AttributeError, RuntimeError):
        ident["aten_isa"] = torch.backends.cpu.get_cpu_capability()
    ident.setdefault("aten_isa", "unknown")
    ident["onednn_isa"] = _onednn_isa()
    return ident


def _cpu_fingerprint(threads: int) -> dict:
    return {
        "type": "cpu",
        **_cpu_identity_here(),
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
        "cpu_model": _cpu_identity_here()["cpu_model"],
    }
    fp.update(_nvml_static(index))
    fp.update(gpu_state(index))
    return fp


def fingerprint(device: torch.device, threads: int, runtime=None) -> dict:
    """The fingerprint of ``device`` on this machine now, measured in ``runtime`` (a
    ``lut.runtimes.Runtime``; default eager, which adds no field)."""
    fp = (_cuda_fingerprint(device.index or 0, threads) if device.type == "cuda"
          else _cpu_fingerprint(threads))
    if runtime is not None:
        fp.update(runtime.fingerprint_fields(threads))
    return fp


def device_identity(fp: dict) -> dict:
    """The device's fields that must match for a table to be used (not the runtime's)."""
    fields = IDENTITY_FIELDS.get(fp.get("type"), ("type",))
    return {k: fp.get(k) for k in fields}


def identity(fp: dict) -> dict:
    """The fields that must match for a table to be used: the device's and the runtime's."""
    return {**device_identity(fp), **{k: fp.get(k, v) for k, v in RUNTIME_FIELDS.items()}}


def foreign_fields(table_fp: dict, here_fp: dict) -> list[str]:
    """Identity fields whose values differ ([] when the table belongs to this machine)."""
    a, b = identity(table_fp), identity(here_fp)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def describe(fp: dict) -> str:
    """One line, e.g. ``cpu 'AMD EPYC' (AuthenticAMD family 23 model 1 stepping 2), 2 cores,
    isa avx avx2 fma ..., oneDNN Intel AVX2, torch 2.13.0+cpu``."""
    ident = identity(fp)
    runtime = ""
    if ident["runtime"] != "torch":
        runtime = (f", {ident['runtime']} {ident['runtime_version']} {ident['provider']} "
                   f"opset {ident['opset']}")
    if ident.get("type") == "cpu":
        return (f"cpu {ident.get('cpu_model')!r} ({ident.get('vendor')} family "
                f"{ident.get('cpu_family')} model {ident.get('cpu_model_number')} stepping "
                f"{ident.get('stepping')}), {ident.get('cores')} cores, isa "
                f"{ident.get('isa') or '-'}, oneDNN {ident.get('onednn_isa')}, torch "
                f"{ident.get('torch')}{runtime}")
    return " ".join(f"{k}={v}" for k, v in device_identity(fp).items()) + runtime


def describe_differences(table_fp: dict, here_fp: dict) -> str:
    """``cpu_family 25 (table) vs 23 (here), ...`` for the identity fields that differ."""
    a, b = identity(table_fp), identity(here_fp)
    return ", ".join(f"{k} {a.get(k)!r} (table) vs {b.get(k)!r} (here)"
                     for k in foreign_fields(table_fp, here_fp))


def device_slug(fp: dict) -> str:
    """A folder name for this device, from its device identity fields alone (tables of every
    runtime on one device share the folder): a readable part plus a hash of them, e.g.
    ``cpu-amd-epyc-f23m1s2-2c-1a2b3c4d``."""
    ident = device_identity(fp)
    name = ident.get("gpu_name") or ident.get("cpu_model") or "device"
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32] or "device"
    if fp.get("type") == "cpu":
        cpuid = "".join(f"{tag}{re.sub(r'[^a-z0-9]+', '', str(ident.get(k)).lower())}"
                        for tag, k in (("f", "cpu_family"), ("m", "cpu_model_number"),
                                       ("s", "stepping")) if ident.get(k) is not None)
        readable = "-".join(p for p in ("cpu", readable, cpuid, f"{ident.get('cores')}c") if p)
    else:
        readable = f"cuda-{readable}"
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"
