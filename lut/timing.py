"""The only code that times anything: warm-up, synchronisation, interleaved rounds, percentiles.

``measure({name: fn}, device, config, clock=...)`` times a set of zero-argument callables (one
op on its input, or a whole network) together. Each is warmed up, then sampled in rounds: every
round times every callable once, in a fresh random order, so a burst of load from another
process lands on one sample of many callables rather than on every sample of one. The statistic
is the median over rounds, with p10/p90 kept. Callables whose spread ``(p90 - p10) / median``
exceeds ``max_spread`` are measured again (interleaved among themselves) and the narrower
measurement is kept.

One call per sample (``inner = 1``) by default, on purpose: a call repeated back to back finds
its weights and buffers in cache, while in a network every op runs after a *different* op.
Interleaving gives each sampled call the cold-ish cache of a network, and the per-op rows then
sum to the network's time up to a near-constant factor (which the calibration absorbs).

Clocks:
    ``thread``  CPU time of the calling thread (``time.thread_time_ns``). Used on CPU with one
                intra-op thread, where all of an op's work runs on the calling thread: it counts
                the work and not the time spent waiting for a core another process holds, so
                timings taken on a loaded, shared machine are those of an unloaded one.
    ``wall``    ``time.perf_counter_ns``; CPU with several threads (their work is not all on
                the calling thread).
    ``cuda``    CUDA events around the call, synchronised on the end event; optionally the call
                is a replay of a captured CUDA graph (no host launch overhead, as when deployed
                with graphs).
The garbage collector is off while timing, so its pauses do not land in a sample.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["CLOCKS", "HOST_CLOCKS", "Timing", "TimingConfig", "measure", "resolve_clock"]

Fn = Callable[[], object]
CLOCKS = ("auto", "thread", "wall", "cuda")
_MIN_RETRY_SET = 8  # callables interleaved when re-measuring a few wide ones
# the host clocks by name, in nanoseconds; looked up at each measurement, so a test can stand in
# a clock that makes this machine look slower or faster than the one that built a table
HOST_CLOCKS: dict[str, Callable[[], int]] = {"thread": time.thread_time_ns,
                                             "wall": time.perf_counter_ns}


@dataclass(frozen=True)
class TimingConfig:
    rounds: int = 100           # samples per callable
    warmup_calls: int = 5       # also primes oneDNN / cuDNN kernel choices
    inner: int = 1              # calls per sample (see the module docstring for why 1)
    max_spread: float = 0.3     # (p90 - p10) / median above this: measure again
    retries: int = 2
    clock: str = "auto"         # auto: thread on CPU with 1 thread, wall on CPU otherwise, cuda
    cuda_graphs: bool = False
    seed: int = 0               # order of callables within each round

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int
    attempts: int = 1

    @property
    def spread(self) -> float:
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else np.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "spread": self.spread}


def resolve_clock(clock: str, device: torch.device, threads: int) -> str:
    """The clock ``auto`` stands for on ``device`` with ``threads`` intra-op threads."""
    if clock not in CLOCKS:
        raise ValueError(f"clock {clock!r}: expected one of {', '.join(CLOCKS)}")
    if device.type == "cuda":
        return "cuda"
    if clock == "auto":
        return "thread" if threads == 1 else "wall"
    if clock == "cuda":
        raise ValueError("clock 'cuda' needs a CUDA device")
    return clock


def _host_sampler(fn: Fn, inner: int, clock: Callable[[], int]) -> Callable[[], float]:
    def sample() -> float:
        t0 = clock()
        for _ in range(inner):
            fn()
        return (clock() - t0) / 1e6 / inner
    return sample


def _cuda_sampler(fn: Fn, inner: int) -> Callable[[], float]:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def sample() -> float:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    return sample


def _cuda_graph(fn: Fn) -> Fn:
    """Capture one call of ``fn`` (after warm-up on a side stream, as capture requires)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings():
        # an op that launches no kernel (skip: the identity) captures an empty graph, which is
        # right: its replay costs nothing, as the op does in a captured network
        warnings.filterwarnings("ignore", message="The CUDA Graph is empty")
        with torch.cuda.graph(graph):
            fn()
    return graph.replay


def _sampler(fn: Fn, clock: str, config: TimingConfig) -> Callable[[], float]:
    if clock == "cuda":
        if config.cuda_graphs:
            fn = _cuda_graph(fn)
        for _ in range(config.warmup_calls):
            fn()
        torch.cuda.synchronize()
        return _cuda_sampler(fn, config.inner)
    for _ in range(config.warmup_calls):
        fn()
    return _host_sampler(fn, config.inner, HOST_CLOCKS[clock])


def _rounds(samplers: Mapping[str, Callable[[], float]], rounds: int, rng: np.random.Generator,
            on_round: Callable[[int], None] | None) -> dict[str, list[float]]:
    names = list(samplers)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            samples[names[i]].append(samplers[names[i]]())
        if on_round:
            on_round(len(names))
    return samples


def _summary(values: list[float], attempts: int) -> Timing:
    p10, p50, p90 = np.percentile(np.asarray(values), [10, 50, 90])
    return Timing(float(p50), float(p10), float(p90), len(values), attempts)


def measure(fns: Mapping[str, Fn], device: torch.device, config: TimingConfig = TimingConfig(),
            *, clock: str = "wall",
            on_round: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time every callable in interleaved rounds; ``on_round(n)`` after each round of n calls.

    Call inside ``lut.device.runtime(...)`` (threads, inference mode, allocator) and pass the
    clock ``resolve_clock`` chose for those settings.
    """
    if not fns:
        return {}
    if config.rounds < 1 or config.inner < 1:
        raise ValueError("rounds and inner must be at least 1")
    rng = np.random.default_rng(config.seed)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        samplers = {name: _sampler(fn, clock, config) for name, fn in fns.items()}
        raw = _rounds(samplers, config.rounds, rng, on_round)
        timings = {n: _summary(v, 1) for n, v in raw.items()}
        for attempt in range(2, config.retries + 2):
            wide = [n for n, t in timings.items() if t.spread > config.max_spread]
            if not wide:
                break
            # Re-measure among fillers too: a callable sampled back to back would find its
            # own data in cache and look faster than it is in a network.
            others = [n for n in samplers if n not in set(wide)]
            fill = max(0, min(len(others), _MIN_RETRY_SET - len(wide)))
            fillers = [others[i] for i in rng.choice(len(others), fill, replace=False)]
            again = _rounds({n: samplers[n] for n in wide + fillers}, config.rounds, rng, None)
            for n in wide:
                retry = _summary(again[n], attempt)
                keep = retry if retry.spread < timings[n].spread else timings[n]
                timings[n] = Timing(**{**asdict(keep), "attempts": attempt})
        return timings
    finally:
        if gc_was_enabled:
            gc.enable()
