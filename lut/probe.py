"""The speed probe: does a table still describe this machine, now?

Two machines with the same identity (``lut.fingerprint``) can run the same network at speeds
2.4x apart (another host under the same CPU name, a throttled or shared one), and one machine
drifts over hours. So a table stores a few *probe networks* from its calibration set, with their
latency measured by this module's own procedure when the table was built, and before a table is
used (``nas search``, ``nas lut validate``, ``nas lut check``) the same networks are timed again,
the same way. The ratio ``now / then`` (median over the probes) says how far the table is off:

    ratio 1.00 +- 0.15   the table describes this machine now
    otherwise            it does not: the default table is rebuilt, an explicit one refused

The probes are the space's fastest network by the table (so the probe also says what the
fastest network of the space measures here) and the two calibration networks closest to the
calibration set's median latency. They are timed interleaved in rounds like every measurement
(``lut.timing``), with as many rounds as fit in about two seconds of their stored latency
(between 15 and 60), fixed when the table is built so that a check repeats it exactly.

A reading outside the tolerance is taken once more before the verdict, and each network keeps
the faster of its two timings: interference from other work only ever slows a measurement, so a
passing burst of it (a probe read 1.82x on a GPU host and 0.98x a minute later) is not taken for
the machine, while a machine that is really slower or faster reads so twice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lut.table import LatencyTable
from lut.timing import TimingConfig
from supernets.errors import NasError
from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["PROBE_TOLERANCE", "ProbeResult", "checked_probe", "probe_table", "record_probes"]

PROBE_TOLERANCE = 0.15     # |now / then - 1| above this: the table does not describe the machine
PROBE_NETWORKS = 3
_PROBE_SECONDS = 2.0       # rounds x stored latency of the probes, roughly
_MIN_ROUNDS, _MAX_ROUNDS = 15, 60
_WARMUP_CALLS = 3
_SEED = 12345              # round order; any fixed value, the same at build and check


@dataclass(frozen=True)
class ProbeResult:
    """One probe of a table on this machine now."""

    table: str
    ratio: float              # median over the probe networks of measured now / stored
    networks: tuple[dict, ...]  # name, choices, stored_ms, measured_ms, ratio
    rounds: int
    seconds: float
    tolerance: float = PROBE_TOLERANCE
    attempts: int = 1         # 2: the first reading was off, the faster of two kept

    @property
    def ok(self) -> bool:
        return abs(self.ratio - 1.0) <= self.tolerance

    @property
    def fastest_ms(self) -> float | None:
        """The space's fastest network (by the table) as measured now."""
        for n in self.networks:
            if n.get("role") == "fastest":
                return n["measured_ms"]
        return None

    def describe(self) -> str:
        """``2.03x its stored probe timings (slower)`` and so on."""
        how = "slower" if self.ratio > 1 else "faster"
        return (f"{self.ratio:.2f}x its stored probe timings (this machine is "
                f"{abs(self.ratio - 1) * 100:.0f}% {how} than when the table was built; "
                f"tolerance ±{self.tolerance * 100:.0f}%"
                + ("; read twice, the faster kept" if self.attempts > 1 else "") + ")")

    @classmethod
    def at_build(cls, table: LatencyTable) -> ProbeResult:
        """The probe of a table built a moment ago: its stored timings, ratio 1 (they were
        measured by this same procedure just now), nothing timed again."""
        probes = table.meta["probes"]
        nets = tuple({"role": n["role"], "name": n["name"], "stored_ms": n["stored_ms"],
                      "measured_ms": n["stored_ms"], "ratio": 1.0} for n in probes["networks"])
        return cls(str(table.path) if table.path else "table", 1.0, nets, probes["rounds"], 0.0)

    def to_dict(self) -> dict:
        return {"table": self.table, "ratio": self.ratio, "ok": self.ok,
                "tolerance": self.tolerance, "rounds": self.rounds, "seconds": self.seconds,
                "attempts": self.attempts, "fastest_ms": self.fastest_ms,
                "networks": list(self.networks)}


def _probe_specs(table: LatencyTable, space: SearchSpace, probes: dict) -> list[ArchSpec]:
    specs = []
    for i, n in enumerate(probes["networks"]):
        try:
            specs.append(space.spec(dict(n["choices"]), n.get("name") or f"probe-{i}"))
        except (NasError, KeyError, TypeError) as e:
            raise NasError(f"{table.where()}: metadata field 'probes' network {i} does not fit "
                           f"the table's space ({e}); rebuild the table with: "
                           f"{table.build_command()} --no-resume") from None
    return specs


def _time(table: LatencyTable, specs: list[ArchSpec], rounds: int) -> list[float]:
    from lut.build import measure_networks  # build imports this module

    timing = TimingConfig(rounds=rounds, warmup_calls=_WARMUP_CALLS, seed=_SEED,
                          clock=table.meta.get("timing", {}).get("clock", "auto"),
                          cuda_graphs=bool(table.meta.get("timing", {}).get("cuda_graphs")))
    timings = measure_networks(specs, table.device, batch=table.batch, dtype=table.dtype,
                               threads=table.threads, timing=timing, runtime=table.runtime)
    return [t.median_ms for t in timings]


def record_probes(table: LatencyTable) -> LatencyTable:
    """Pick the probe networks from the table's calibration set and time them with the probe's
    procedure; returns the table with ``meta["probes"]`` set (the table must be calibrated)."""
    calibration = table.calibration
    if calibration is None or len(calibration.networks) < 2:
        raise NasError(f"{table.where()}: probes need a calibrated table")
    nets = list(calibration.networks)
    fastest = min(nets, key=lambda n: n["raw_ms"])
    others = [n for n in nets if n is not fastest]
    middle = float(np.median([n["measured_ms"] for n in others]))
    others.sort(key=lambda n: (abs(n["measured_ms"] - middle), n["name"]))
    chosen = [("fastest", fastest)] + [("median", n) for n in others[:PROBE_NETWORKS - 1]]
    space = table.space
    specs = [space.spec(dict(n["choices"]), n["name"]) for _, n in chosen]
    per_round = sum(n["measured_ms"] for _, n in chosen)
    rounds = int(np.clip(round(_PROBE_SECONDS * 1e3 / max(per_round, 1e-3)),
                         _MIN_ROUNDS, _MAX_ROUNDS))
    measured = _time(table, specs, rounds)
    probes = {"rounds": rounds, "warmup_calls": _WARMUP_CALLS, "seed": _SEED,
              "networks": [{"role": role, "name": n["name"], "choices": dict(n["choices"]),
                            "stored_ms": ms}
                           for (role, n), ms in zip(chosen, measured)]}
    return table.with_meta(probes=probes)


def probe_table(table: LatencyTable, *, tolerance: float = PROBE_TOLERANCE) -> ProbeResult:
    """Time the table's probe networks now and compare with the stored timings.

    NasError if the table has no probes (built by an older version) or they do not fit its
    space; never raises because the ratio is off (that is the result's ``ok``).
    """
    probes = table.meta.get("probes")
    if not probes:
        raise NasError(f"{table.where()}: the table has no speed probes (built by an older "
                       f"version of nas), so nothing can tell whether it describes this "
                       f"machine; rebuild it with: {table.build_command()} --no-resume")
    try:
        rounds = int(probes["rounds"])
        stored = [float(n["stored_ms"]) for n in probes["networks"]]
    except (KeyError, TypeError, ValueError) as e:
        raise NasError(f"{table.where()}: metadata field 'probes' is malformed ({e}); rebuild "
                       f"the table with: {table.build_command()} --no-resume") from None
    if not stored or not all(math.isfinite(s) and s > 0 for s in stored):
        raise NasError(f"{table.where()}: metadata field 'probes' holds no positive timings; "
                       f"rebuild the table with: {table.build_command()} --no-resume")
    specs = _probe_specs(table, table.space, probes)
    def ratio_of(measured: list[float]) -> float:
        return float(np.median([now / then for now, then in zip(measured, stored)]))

    started = time.perf_counter()
    measured, attempts = _time(table, specs, rounds), 1
    if abs(ratio_of(measured) - 1.0) > tolerance:  # once more; the faster reading per network
        measured = [min(a, b) for a, b in zip(measured, _time(table, specs, rounds))]
        attempts = 2
    seconds = round(time.perf_counter() - started, 2)
    nets = tuple({"role": n.get("role"), "name": s.name, "stored_ms": then, "measured_ms": now,
                  "ratio": now / then}
                 for n, s, then, now in zip(probes["networks"], specs, stored, measured))
    return ProbeResult(str(table.path) if table.path else "table", ratio_of(measured), nets,
                       rounds, seconds, tolerance, attempts)


def checked_probe(table: LatencyTable, allow_foreign_lut: bool = False) -> ProbeResult | None:
    """The speed probe of a table the user named: NasError (one line, naming the ratio) if it
    does not describe this machine now, unless ``allow_foreign_lut``; None when the table is
    another device's (accepted as such) or, with ``allow_foreign_lut``, cannot be probed."""
    if table.foreign:
        return None  # another device's table, accepted as such: nothing here to compare with
    try:
        probe = probe_table(table)
    except NasError:
        if allow_foreign_lut:
            return None
        raise
    if not probe.ok and not allow_foreign_lut:
        raise NasError(f"{table.where()} does not describe this machine now: the speed probe "
                       f"measured {probe.describe()}; rebuild it with: "
                       f"{table.build_command()} --no-resume, or pass --allow-foreign-lut")
    return probe
