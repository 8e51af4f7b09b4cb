"""Building a table: measure every row a space needs, then calibrate on whole networks.

``build_table(space, device)`` enumerates the space's rows (``lut.keys.space_rows``), builds each
op with ``supernets.ops.build_op`` (the factory the networks use) and times it on a random input
of its shape with ``lut.timing.measure``. Rows are measured in chunks, interleaved within a chunk,
in a seeded random order; the table is saved atomically after each chunk, so a killed build
resumes with the missing rows only. Chunks are cut by time: each holds as many rows as take
about ``SAVE_SECONDS`` to measure (from the time per row so far; ``MIN_CHUNK_ROWS`` at least,
``CHUNK_ROWS`` at most), so a killed build loses a few seconds of measuring, not minutes. The
trade-off: a slow spell of a shared machine longer than a chunk lands on that chunk's rows
only, which the calibration cannot absorb (with 32-row chunks it inflated one chunk's rows by
up to 50%, measured), where one chunk of every row would spread it over all of them alike.
A file lock beside the table (``.<name>.lock``) makes a second builder on the same file wait
and then resume (finding nothing left to measure) instead of measuring on a busy machine and
racing on the file. The lock file is removed when a build ends (see ``_build_lock``).

Calibration: a few whole networks (the space's largest, its fastest by the table and random
samples drawn with ``seed``) are measured end to end with the same timing method. Two models are
compared by leave-one-out error on them, the plain sum of rows and an affine map
``measured = a * sum_of_rows + b`` (least squares on relative error), and the better one is the
table's (``choose_calibration``). Then the speed probes (``lut.probe``) are picked from these
networks and timed, so that later users of the table can check it still fits the machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from lut.device import canonical_device, default_threads, parse_device, parse_dtype
from lut.device import runtime as settings_for
from lut.fingerprint import device_slug, fingerprint, gpu_state
from lut.keys import RowShape, space_rows
from lut.probe import record_probes
from lut.runtimes import EAGER, Runtime
from lut.table import Calibration, LatencyTable, foreign_message, space_to_dict
from lut.timing import Timing, TimingConfig, measure
from supernets.errors import NasError
from supernets.fileio import check_writable_dir
from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["BuildResult", "build", "build_table", "calibrate", "choose_calibration",
           "default_table_path", "loo_errors", "measure_network", "measure_networks"]

CHUNK_ROWS = 256      # rows measured together (interleaved), at most; see the module docstring
MIN_CHUNK_ROWS = 16   # ... and at least, so that interleaving still spreads a burst of load
SAVE_SECONDS = 5.0    # measuring time between two saves of the partial table, about
CALIBRATION_NETWORKS = 8


def default_table_path(space: SearchSpace, device: str, batch: int = 1, dtype: str = "fp32", *,
                       threads: int | None = None, root: str | Path = "results",
                       runtime: Runtime = EAGER) -> Path:
    """``results/lut/<device-slug>/<space>-<H>x<W>-b<batch>-<dtype>.parquet`` (``-t<N>`` added
    for a non-default thread count, then the runtime's suffix, e.g.
    ``-onnxruntime-1.32.0-cpu``), relative to the working directory unless ``root`` is given.

    The slug comes from this machine's fingerprint of ``device``, so a table measured elsewhere
    is not picked up by accident.
    """
    dev = parse_device(device)
    threads = threads or default_threads(dev)
    h, w = space.skeleton.input_size
    name = f"{space.name}-{h}x{w}-b{batch}-{dtype}"
    if threads != default_threads(dev):
        name += f"-t{threads}"
    name += runtime.file_suffix()
    return Path(root) / "lut" / device_slug(fingerprint(dev, threads)) / f"{name}.parquet"


def _conditions(dev: torch.device) -> dict:
    """What varies between runs on one device: load on CPU, clocks and temperature on GPU."""
    if dev.type == "cuda":
        return gpu_state(dev.index or 0)
    return {"loadavg_1m": round(os.getloadavg()[0], 2)}


def measure_networks(specs: Sequence[ArchSpec], device: str = "cpu", *, batch: int = 1,
                     dtype: str = "fp32", threads: int | None = None,
                     timing: TimingConfig | None = None, progress: bool = False,
                     desc: str = "networks", runtime: Runtime = EAGER,
                     how: str = "chain") -> list[Timing]:
    """End-to-end timings of whole networks, interleaved in rounds; one per spec, in order.
    ``runtime``: eager or ONNX Runtime (``how``: its networks' graphs, ``lut.ort``)."""
    dev, dt = parse_device(device), parse_dtype(dtype)
    threads = threads or default_threads(dev)
    timing = timing or TimingConfig()
    clock = runtime.clock(timing.clock, dev, threads)
    gen = torch.Generator().manual_seed(timing.seed)
    with settings_for(dev, threads):
        made = runtime.network_calls(specs, dev, dt, batch, gen, threads, how=how)
        calls = {f"{i}:{s.name}": call for i, (s, call) in enumerate(zip(specs, made))}
        with tqdm(total=timing.rounds * len(calls), desc=desc, unit="run",
                  disable=not progress, file=sys.stderr, leave=False) as bar:
            timings = measure(calls, dev, timing, clock=clock, on_round=bar.update)
    return [timings[name] for name in calls]


def measure_network(spec: ArchSpec, device: str = "cpu", *, batch: int = 1, dtype: str = "fp32",
                    threads: int | None = None, timing: TimingConfig | None = None,
                    runtime: Runtime = EAGER, how: str = "chain") -> dict:
    """End-to-end timing of ``spec``'s standalone network with the tables' timing method.

    The network is interleaved in rounds with random filler networks of the same skeleton, as
    networks are when a table is calibrated and validated: sampled back to back, a small
    network finds its weights and activations in cache and reads up to ~20% faster than the
    same network in the rounds its table's calibration was fitted on.
    """
    dev = parse_device(device)
    threads = threads or default_threads(dev)
    timing = timing or TimingConfig()
    (t, *_) = measure_networks([spec, *_fillers(spec)], device, batch=batch, dtype=dtype,
                               threads=threads, timing=timing, runtime=runtime, how=how)
    return {**t.to_dict(), "device": canonical_device(device), "batch": batch, "dtype": dtype,
            "threads": threads, "clock": runtime.clock(timing.clock, dev, threads),
            "runtime": runtime.describe()}


def _fillers(spec: ArchSpec, count: int = 16, seed: int = 0) -> list[ArchSpec]:
    """Random networks on ``spec``'s skeleton, drawn as calibration and validation draw theirs."""
    from supernets.space import SearchSpace, seg_heads

    heads = seg_heads() if spec.skeleton.task == "seg" else ()
    space = SearchSpace("fillers", spec.skeleton, seg_heads=heads)
    rng = np.random.default_rng(seed)
    return [space.sample(rng, name=f"filler{i}") for i in range(count)]


def calibrate(raw_ms: Sequence[float], measured_ms: Sequence[float]) -> tuple[float, float]:
    """Least squares on relative error: minimise sum(((a * raw + b) - measured) / measured)^2."""
    raw, meas = np.asarray(raw_ms, float), np.asarray(measured_ms, float)
    if len(raw) < 2 or np.ptp(raw) == 0:
        return float(np.median(meas / raw)), 0.0  # no spread to fit a slope: scale only
    a, b = np.polyfit(raw, meas, 1, w=1.0 / meas)
    return float(a), float(b)


def loo_errors(raw_ms: Sequence[float], measured_ms: Sequence[float]) -> dict[str, float]:
    """Mean |relative error| on each held-out network, for each calibration method.

    ``raw``: the plain sum of rows (nothing fitted, so every network is held out as it is);
    ``affine``: ``calibrate`` fitted on the other networks, predicting the one left out.
    """
    raw, meas = np.asarray(raw_ms, float), np.asarray(measured_ms, float)
    errors = {"raw": float(np.mean(np.abs(raw - meas) / meas))}
    if len(raw) >= 3:
        held = []
        for i in range(len(raw)):
            keep = np.arange(len(raw)) != i
            a, b = calibrate(raw[keep], meas[keep])
            held.append(abs(a * raw[i] + b - meas[i]) / meas[i])
        errors["affine"] = float(np.mean(held))
    return errors


def choose_calibration(raw_ms: Sequence[float], measured_ms: Sequence[float],
                       networks: Sequence[dict] = ()) -> Calibration:
    """The calibration with the lower leave-one-out error (``raw`` on a tie or too few
    networks to hold one out): evidence per table, since the sum of rows alone is the better
    predictor on some machines and the affine fit on others."""
    loo = loo_errors(raw_ms, measured_ms)
    a, b = calibrate(raw_ms, measured_ms)
    method = "affine" if loo.get("affine", np.inf) < loo["raw"] and a > 0 else "raw"
    ca, cb = (a, b) if method == "affine" else (1.0, 0.0)
    nets = tuple({**n, "predicted_ms": ca * n["raw_ms"] + cb} for n in networks)
    return Calibration(ca, cb, nets, method, loo, (a, b))


def _calibration_specs(table: LatencyTable, space: SearchSpace, n: int,
                       seed: int) -> list[ArchSpec]:
    from lut.predictor import LatencyPredictor  # the predictor imports table; avoid a cycle

    uncalibrated = LatencyPredictor(table.with_meta(calibration=Calibration(1.0, 0.0).to_dict()))
    (fastest, _), _ = uncalibrated.bounds(space)
    specs = [space.largest(), fastest]
    rng = np.random.default_rng(seed)
    while len(specs) < n:
        specs.append(space.sample(rng, f"calibration-{len(specs) - 1}"))
    return specs[:n]


def _fit_calibration(table: LatencyTable, space: SearchSpace, *, networks: int, seed: int,
                     timing: TimingConfig, progress: bool) -> Calibration:
    from lut.predictor import LatencyPredictor

    specs = _calibration_specs(table, space, networks, seed)
    measured = measure_networks(specs, table.device, batch=table.batch, dtype=table.dtype,
                                threads=table.threads, timing=timing, progress=progress,
                                desc="calibration", runtime=table.runtime)
    raw_predictor = LatencyPredictor(table.with_meta(calibration=Calibration(1.0, 0.0).to_dict()))
    raw = [raw_predictor.raw_latency(s) for s in specs]
    meas = [t.median_ms for t in measured]
    nets = [{"name": s.name, "choices": dict(s.choices), "raw_ms": r, "measured_ms": t.median_ms,
             "p10_ms": t.p10_ms, "p90_ms": t.p90_ms}
            for s, r, t in zip(specs, raw, measured)]
    calibration = choose_calibration(raw, meas, nets)
    if calibration.method == "affine" and not calibration.a > 0:
        raise NasError(f"{table.where()}: calibration failed (slope {calibration.a:.3g}): "
                       "whole-network times do not grow with the table's sums; the machine was "
                       "probably too busy, build again")
    return calibration


def _open_or_create(out: Path, space: SearchSpace, dev: torch.device, device: str, batch: int,
                    dtype: str, threads: int, clock: str, timing: TimingConfig,
                    resume: bool, rt: Runtime) -> LatencyTable:
    fresh = LatencyTable.empty(space, device=device, batch=batch, dtype=dtype, threads=threads,
                               clock=clock, fingerprint=fingerprint(dev, threads, rt),
                               timing=timing.to_dict(), path=out, backend=rt.meta(threads))
    if not (resume and out.exists()):
        return fresh
    existing = LatencyTable.load(out, allow_foreign=True)  # refuses a corrupt file
    if existing.foreign:  # never resume (nor overwrite) another device's measurements
        raise NasError(foreign_message(existing, "choose another --out, or pass --no-resume to "
                                                 "measure it again on this device"))
    if existing.settings() != fresh.settings():
        want, have = fresh.settings(), existing.settings()
        def show(k, v):
            return repr(v["name"]) if k == "space" else (
                Runtime.from_meta({"backend": v}).describe() if k == "backend" else repr(v))
        diff = ", ".join(f"{k} {show(k, have[k])} here vs {show(k, want[k])} asked"
                         for k in want if want[k] != have[k])
        raise NasError(f"{out}: holds a table with other settings ({diff}); choose another "
                       "--out, or pass --no-resume to measure it again from scratch")
    return existing


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int             # rows the table holds for its space
    measured_rows: int    # rows measured by this call (0: the table was complete)
    calibrated: bool      # calibration fitted by this call
    seconds: float        # this call's wall time


def build_table(space: SearchSpace, device: str = "cpu", *, batch: int = 1, dtype: str = "fp32",
                threads: int | None = None, out: Path | None = None, progress: bool = True,
                resume: bool = True, timing: TimingConfig | None = None,
                chunk_rows: int = CHUNK_ROWS, calibration_networks: int = CALIBRATION_NETWORKS,
                seed: int = 0, lock_timeout: float = -1,
                save_seconds: float = SAVE_SECONDS, runtime: Runtime = EAGER) -> Path:
    """Measure (or complete) ``space``'s table on ``device`` and calibrate it; returns its path.

    ``resume=False`` measures every row again; ``lock_timeout``: seconds to wait for another
    builder of the same file (-1: as long as it takes); ``save_seconds``: measuring time between
    two saves of the partial table, about (chunks of ``MIN_CHUNK_ROWS`` to ``chunk_rows``).
    """
    return build(space, device, batch=batch, dtype=dtype, threads=threads, out=out,
                 progress=progress, resume=resume, timing=timing, chunk_rows=chunk_rows,
                 calibration_networks=calibration_networks, seed=seed,
                 lock_timeout=lock_timeout, save_seconds=save_seconds, runtime=runtime).path


def build(space: SearchSpace, device: str = "cpu", *, batch: int = 1, dtype: str = "fp32",
          threads: int | None = None, out: Path | None = None, progress: bool = True,
          resume: bool = True, timing: TimingConfig | None = None, chunk_rows: int = CHUNK_ROWS,
          calibration_networks: int = CALIBRATION_NETWORKS, seed: int = 0,
          lock_timeout: float = -1, save_seconds: float = SAVE_SECONDS,
          runtime: Runtime = EAGER) -> BuildResult:
    """``build_table`` that also says what it did."""
    dev, _ = parse_device(device), parse_dtype(dtype)
    if batch < 1:
        raise NasError(f"batch = {batch}: expected a positive integer")
    runtime.check_dtype(dtype)
    threads = threads or default_threads(dev)
    timing = timing or TimingConfig(seed=seed)
    clock = runtime.clock(timing.clock, dev, threads)
    out = Path(out) if out is not None else default_table_path(space, device, batch, dtype,
                                                                threads=threads, runtime=runtime)
    if out.suffix != ".parquet":
        raise NasError(f"--out {out}: expected a .parquet file")
    if out.is_dir():
        raise NasError(f"--out {out}: is a directory, expected a table file (.parquet)")
    check_writable_dir(out.parent, f"--out {out}: its folder")  # before measuring anything
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out, lock_timeout):
        return _build_locked(space, dev, canonical_device(device), batch=batch, dtype=dtype,
                             threads=threads, clock=clock, out=out, progress=progress,
                             resume=resume, timing=timing, chunk_rows=chunk_rows,
                             calibration_networks=calibration_networks, seed=seed,
                             save_seconds=save_seconds, rt=runtime)


@contextlib.contextmanager
def _build_lock(out: Path, timeout: float) -> Iterator[None]:
    """Held while ``out`` is built: a second builder of the same file waits, then resumes.

    The lock file is removed at the end, while still locked. A builder that was waiting may
    then hold a lock on the removed file while a newcomer creates and locks a new one, so every
    builder checks, once it holds the lock, that the path still names the file it locked, and
    locks again if not (recent filelock versions do this check themselves as well).
    """
    lock = FileLock(str(out.parent / f".{out.name}.lock"))
    deadline = None if timeout < 0 else time.monotonic() + timeout
    waiting = False
    while True:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not waiting:
                print(f"nas: {out} is being built by another process; waiting for it",
                      file=sys.stderr)
                waiting = True
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                lock.acquire(timeout=left)
            except Timeout:
                raise NasError(f"{out}: another build holds {lock.lock_file} "
                               f"(waited {timeout:g} s)") from None
        if _locks_current_file(lock) is not False:
            break
        lock.release()  # the file we locked was removed by the builder before us
    try:
        yield
    finally:
        try:
            if _locks_current_file(lock):  # never remove a lock file this process does not hold
                Path(lock.lock_file).unlink(missing_ok=True)
        finally:
            lock.release()


def _locks_current_file(lock: FileLock) -> bool | None:
    """Whether ``lock``'s path still names the file it holds locked; None if filelock does not
    expose the file (then the lock file is left in place)."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if fd is None:
        return None
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock.lock_file))
    except FileNotFoundError:
        return False


def _export_rows(rows: Sequence[RowShape], batch: int, dtype: str, progress: bool) -> None:
    """Export the rows' ops to ONNX (``lut.ort``; cached on disk) before measuring any."""
    from lut import ort

    with tqdm(total=len(rows), desc="export to ONNX", unit="row", file=sys.stderr,
              disable=not progress) as bar:
        ort.op_models(rows, batch, dtype, on_export=bar.update)


def _chunk_size(rows_done: int, seconds_done: float, chunk_rows: int,
                save_seconds: float) -> int:
    """Rows for the next chunk: about ``save_seconds`` of measuring at the time per row so far,
    within ``MIN_CHUNK_ROWS`` and ``chunk_rows`` (the first chunk is ``MIN_CHUNK_ROWS``)."""
    low = min(MIN_CHUNK_ROWS, chunk_rows)
    if rows_done == 0 or seconds_done <= 0:
        return low
    return max(low, min(chunk_rows, int(save_seconds * rows_done / seconds_done)))


def _build_locked(space: SearchSpace, dev: torch.device, device: str, *, batch: int, dtype: str,
                  threads: int, clock: str, out: Path, progress: bool, resume: bool,
                  timing: TimingConfig, chunk_rows: int, calibration_networks: int,
                  seed: int, save_seconds: float, rt: Runtime) -> BuildResult:
    started = time.perf_counter()
    table = _open_or_create(out, space, dev, device, batch, dtype, threads, clock, timing, resume,
                            rt)
    prior_seconds = float(table.meta.get("build_seconds", 0.0))  # a resumed build's earlier time

    def seconds() -> float:
        return round(prior_seconds + time.perf_counter() - started, 1)

    missing = table.missing(space)
    order = np.random.default_rng(seed).permutation(len(missing))
    missing = [missing[i] for i in order]
    calibrated = False
    before = _conditions(dev)
    gen = torch.Generator().manual_seed(seed)
    dt = parse_dtype(dtype)
    if missing and not rt.is_eager:
        _export_rows(missing, batch, dtype, progress)  # cached: a resumed build skips them
    with tqdm(total=len(missing), desc=f"lut {space.name} on {device}", unit="row",
              disable=not progress or not missing, file=sys.stderr,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} rows "
                         "[{elapsed}<{remaining}]") as bar, settings_for(dev, threads) as settings:
        done, measuring = 0, 0.0
        while done < len(missing):
            chunk_started = time.perf_counter()
            chunk = missing[done:done + _chunk_size(done, measuring, chunk_rows, save_seconds)]
            calls = rt.op_calls(chunk, dev, dt, batch, gen, threads)
            timings = measure(calls, dev, timing, clock=clock,
                              on_round=lambda n: bar.update(n / timing.rounds))
            table = table.with_rows({row: timings[row.key] for row in chunk})
            table = table.with_meta(runtime=settings, calibration=None,
                                    build_seconds=seconds())
            table.save(out)
            done += len(chunk)
            measuring += time.perf_counter() - chunk_started
    if missing or table.calibration is None or not table.meta.get("probes"):
        calibration = _fit_calibration(table, space, networks=calibration_networks, seed=seed,
                                       timing=timing, progress=progress)
        table = table.with_meta(calibration=calibration.to_dict(), space=space_to_dict(space))
        table = record_probes(table)
        table = table.with_meta(build_seconds=seconds(),
                                conditions={"before": before, "after": _conditions(dev)})
        table.save(out)
        calibrated = True
    return BuildResult(out, len(space_rows(space)), len(missing), calibrated,
                       round(time.perf_counter() - started, 1))
