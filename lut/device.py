"""Device strings, dtypes and the runtime settings every measurement runs under.

``cpu``, ``cuda`` and ``cuda:N`` are the devices; ``fp32`` and ``fp16`` the dtypes. Anything else
is a ``NasError`` naming the value. ``runtime(...)`` is the one place that sets threads, the
inference mode and the allocator for a measurement, and it reports what was set so that the
table stores it.

Allocator: with glibc's default, buffers over its (moving) mmap threshold are mapped fresh on
every call, and the page faults cost up to a third of a small network's time on CPU, by an
amount that depends on what was allocated before (measured: 500 to 1000 faults and 0.5 to 2.8 ms
of kernel time per forward of cpu-small networks). That history is not a property of an op, so
no per-op table can predict it. ``runtime`` raises glibc's mmap and trim thresholds (``mallopt``;
the same as exporting ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``,
which is what a deployment should do, or use jemalloc/tcmalloc as PyTorch's CPU tuning guide
advises). This is a process-wide setting and stays in force after the block.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from supernets.errors import NasError

__all__ = ["DTYPES", "available_cores", "canonical_device", "default_threads", "fix_allocator",
           "parse_device", "parse_dtype", "runtime"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(text: str) -> torch.device:
    """``'cpu'``, ``'cuda'`` or ``'cuda:N'`` -> a torch device that exists on this machine."""
    m = _DEVICE.match(str(text).strip())
    if not m or (m[1] == "cpu" and m[2] is not None):
        raise NasError(f"unknown device {text!r}; expected cpu, cuda or cuda:N")
    if m[1] == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NasError(f"device {text!r}: CUDA is not available on this machine "
                       f"(torch {torch.__version__})")
    index = int(m[2] or 0)
    if index >= torch.cuda.device_count():
        raise NasError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA "
                       f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def canonical_device(text: str) -> str:
    """The device string as stored in a table (``cuda`` becomes ``cuda:0``); checks syntax only."""
    m = _DEVICE.match(str(text).strip())
    if not m or (m[1] == "cpu" and m[2] is not None):
        raise NasError(f"unknown device {text!r}; expected cpu, cuda or cuda:N")
    return "cpu" if m[1] == "cpu" else f"cuda:{int(m[2] or 0)}"


def parse_dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text]
    except KeyError:
        raise NasError(f"unknown dtype {text!r}; expected one of {', '.join(DTYPES)}") from None


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(device: torch.device) -> int:
    """One intra-op thread, so that tables measured on a shared machine still predict.

    With one thread all of an op's work runs on the calling thread, and ``lut.timing`` can time
    it by that thread's CPU time: waiting for a core that another process holds is not counted.
    Measured on the shared 2-core build machine while other engineers trained models (load
    average 6): one thread, CPU-time clock, built the cpu-small table in about 25 s with a
    median row spread (p90 - p10) / median near 0.2, and its sums predicted whole networks to
    within a few percent; two threads need the wall clock (the second thread's work is not on
    the calling thread), and the same build took 536 s with a median spread of 3.9, the rows
    measuring the load rather than the ops. ``--threads`` overrides this for a dedicated
    machine, where the wall clock is then used. On a GPU the host threads barely matter.
    """
    return 1


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30


@functools.lru_cache(maxsize=1)
def fix_allocator() -> str:
    """Raise glibc's mmap/trim thresholds once per process; returns what is in force."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        return "default (mallopt unavailable)"
    return f"glibc mmap_threshold={MMAP_THRESHOLD} trim_threshold={TRIM_THRESHOLD}"


@contextmanager
def runtime(device: torch.device, threads: int) -> Iterator[dict]:
    """Threads fixed, inference mode on, allocator fixed; yields the settings in force."""
    if threads < 1:
        raise NasError(f"threads = {threads}: expected a positive integer")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        settings = {
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "inference_mode": True,
            "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
            "allocator": fix_allocator(),
        }
        if device.type == "cuda":
            settings.update({
                "cudnn_enabled": torch.backends.cudnn.enabled,
                "cudnn_version": torch.backends.cudnn.version(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "cudnn_deterministic": torch.backends.cudnn.deterministic,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            })
        # CUDA events, streams and graphs belong to the *current* device: make it the one
        # measured (``cuda:1`` timed with cuda:0 current would time nothing it launched)
        on_device = (torch.cuda.device(device) if device.type == "cuda"
                     else contextlib.nullcontext())
        with on_device, torch.inference_mode():
            yield settings
    finally:
        torch.set_num_threads(previous)
