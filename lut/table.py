"""A latency table: one row per (op, input shape), plus the settings it was measured under.

Stored as Parquet (pandas/pyarrow). The rows are a plain table; the metadata (schema version,
device and fingerprint, batch, dtype, threads, clock, runtime settings, timing settings, the
search space the rows cover, and the calibration) is one JSON object under the Parquet schema
metadata key ``nas.lut``. Schema ``nas.lut/1``:

    columns   key (row_key), op, in_chs, out_chs, stride, in_h, in_w,
              median_ms, p10_ms, p90_ms, spread, samples, attempts, measured_at (UTC ISO)
    metadata  {"schema": "nas.lut/1", "device": "cpu", "dtype": "fp32", "batch": 1,
               "threads": 1, "clock": "thread", "fingerprint": {...}, "runtime": {...},
               "timing": {...}, "space": {...},
               "calibration": {"a", "b", "method", "loo", "affine", "networks"} | null,
               "probes": {"rounds", "warmup_calls", "seed", "networks"} | absent,
               "conditions": {...}, "build_seconds": float,
               "backend": {"name": "onnxruntime", "version", "provider", "session_options",
                           "opset", "exporter"} | absent}

``backend`` is the runtime the rows were measured in (``lut.runtimes``); absent: PyTorch eager.

The probes (``lut.probe``) are a few calibration networks with their latency as the probe
measured it at build time; tables written before probes existed lack them and are refused by
the commands that must know the table still fits the machine (rebuild them).

``LatencyTable.load`` validates everything (a corrupt or truncated file, another schema, a NaN
or non-positive latency, a fingerprint from another device) and raises ``NasError`` with the
file and what is wrong. Saving is atomic.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lut.device import canonical_device, parse_device
from lut.fingerprint import describe_differences, fingerprint, foreign_fields
from lut.keys import RowShape, parse_row_key, row_key, space_rows
from lut.timing import Timing
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.space import SPACES, SearchSpace
from supernets.spec import Skeleton, Stage

__all__ = ["CALIBRATION_METHODS", "COLUMNS", "SCHEMA", "Calibration", "LatencyTable",
           "foreign_message",
           "space_from_dict", "space_to_dict"]

SCHEMA = "nas.lut/1"
META_KEY = b"nas.lut"
COLUMNS = ["key", "op", "in_chs", "out_chs", "stride", "in_h", "in_w", "median_ms", "p10_ms",
           "p90_ms", "spread", "samples", "attempts", "measured_at"]
_LATENCY_COLUMNS = ("median_ms", "p10_ms", "p90_ms")
LOW_COLUMNS = ["low_chs", "low_h", "low_w"]   # segmentation heads' rows only
_REQUIRED_META = ("device", "dtype", "batch", "threads", "clock", "fingerprint", "space")


CALIBRATION_METHODS = ("raw", "affine")


@dataclass(frozen=True)
class Calibration:
    """measured ~ a * (sum of rows) + b, fitted on whole networks measured end to end.

    ``method`` says which model the table uses, chosen at build time by leave-one-out error on
    the calibration networks (``loo``: method -> mean |relative error| of the held-out network):
    ``raw`` (a = 1, b = 0: the plain sum of rows) or ``affine`` (a and b fitted). ``affine``
    keeps the fitted pair for reporting even when ``raw`` is chosen.
    """

    a: float
    b: float
    networks: tuple[dict, ...] = field(default=(), compare=False)
    method: str = "affine"
    loo: dict = field(default_factory=dict, compare=False)
    affine: tuple[float, float] | None = field(default=None, compare=False)

    def apply(self, raw_ms: float):
        return self.a * raw_ms + self.b

    def to_dict(self) -> dict:
        d = {"a": self.a, "b": self.b, "method": self.method, "loo": dict(self.loo),
             "networks": list(self.networks)}
        if self.affine is not None:
            d["affine"] = {"a": self.affine[0], "b": self.affine[1]}
        return d

    @classmethod
    def from_dict(cls, d: object, where: str) -> Calibration:
        if not isinstance(d, dict) or not all(
                isinstance(d.get(k), (int, float)) and math.isfinite(d[k]) for k in ("a", "b")):
            raise NasError(f"{where}: calibration = {d!r}: expected {{\"a\": number, \"b\": "
                           "number}} with finite values")
        if d["a"] <= 0:
            raise NasError(f"{where}: calibration slope a = {d['a']}: expected a positive "
                           "number (measured time grows with the sum of rows)")
        method = d.get("method", "affine")  # tables before the choice were all affine
        if method not in CALIBRATION_METHODS:
            raise NasError(f"{where}: calibration method {method!r}: expected one of "
                           f"{', '.join(CALIBRATION_METHODS)}")
        affine = d.get("affine")
        pair = (float(affine["a"]), float(affine["b"])) if isinstance(affine, dict) else None
        return cls(float(d["a"]), float(d["b"]), tuple(d.get("networks") or ()), method,
                   dict(d.get("loo") or {}), pair)


def space_to_dict(space: SearchSpace) -> dict:
    sk = space.skeleton
    return {
        "name": space.name,
        "input_size": list(sk.input_size),
        "num_joints": sk.num_joints,
        "stem_width": sk.stem_width,
        "stages": [asdict(s) for s in sk.stages],
        "head_stages": sk.head_stages,
        "backbone_ops": list(space.backbone_ops),
        "head_ops": list(space.head_ops),
        "head_widths": list(space.head_widths),
        # only where set, so that the metadata of pose tables reads as before
        **({"task": sk.task, "seg_heads": list(space.seg_heads)} if sk.task != "pose" else {}),
    }


def space_from_dict(d: dict) -> SearchSpace:
    """Inverse of ``space_to_dict``; KeyError/TypeError/ValueError on a malformed dict."""
    skeleton = Skeleton(input_size=tuple(d["input_size"]), num_joints=int(d["num_joints"]),
                        stem_width=int(d["stem_width"]),
                        stages=tuple(Stage(**s) for s in d["stages"]),
                        head_stages=int(d["head_stages"]), task=d.get("task", "pose"))
    return SearchSpace(d["name"], skeleton, tuple(d["backbone_ops"]), tuple(d["head_ops"]),
                       tuple(d["head_widths"]), tuple(d.get("seg_heads", ())))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _row_record(row: RowShape, t: Timing, measured_at: str) -> dict:
    return {"key": row.key, "op": row.op, "in_chs": row.in_chs, "out_chs": row.out_chs,
            "stride": row.stride, "in_h": row.in_hw[0], "in_w": row.in_hw[1],
            "median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms,
            "spread": t.spread, "samples": t.samples, "attempts": t.attempts,
            "measured_at": measured_at,
            # a segmentation head's low-level feature (columns only in tables that have one)
            **({"low_chs": row.low_chs, "low_h": row.low_hw[0], "low_w": row.low_hw[1]}
               if row.low_chs else {})}


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if c in ("key", "op", "measured_at")
                                      else "float64" if c.endswith("ms") or c == "spread"
                                      else "int64") for c in COLUMNS})


class LatencyTable:
    """Rows (a DataFrame indexed by key) and the metadata they were measured under."""

    def __init__(self, rows: pd.DataFrame, meta: dict, path: Path | None = None):
        self.rows = rows.reset_index(drop=True)
        self.meta = meta
        self.path = Path(path) if path is not None else None
        self.foreign = False  # set by load(..., allow_foreign=True) for another device's table
        self._latency = dict(zip(self.rows["key"], self.rows["median_ms"].astype(float)))

    # -- settings ----------------------------------------------------------------------------
    schema = property(lambda self: self.meta["schema"])
    device = property(lambda self: self.meta["device"])
    dtype = property(lambda self: self.meta["dtype"])
    batch = property(lambda self: int(self.meta["batch"]))
    threads = property(lambda self: int(self.meta["threads"]))
    clock = property(lambda self: self.meta["clock"])
    fingerprint = property(lambda self: self.meta["fingerprint"])

    @property
    def space(self) -> SearchSpace:
        return space_from_dict(self.meta["space"])

    @property
    def runtime(self):
        """The runtime the table was measured in (``lut.runtimes.Runtime``)."""
        from lut.runtimes import Runtime

        return Runtime.from_meta(self.meta, self.where())

    @property
    def calibration(self) -> Calibration | None:
        cal = self.meta.get("calibration")
        return None if cal is None else Calibration.from_dict(cal, str(self.path or "table"))

    def settings(self) -> dict:
        """What must agree between a table and a build that resumes it."""
        keys = ("device", "dtype", "batch", "threads", "clock", "space")
        return {**{k: self.meta[k] for k in keys}, "backend": self.meta.get("backend")}

    def where(self) -> str:
        return str(self.path) if self.path else "latency table"

    def build_command(self, space: SearchSpace | None = None) -> str:
        """The command that measures ``space``'s rows (default: completes this table)."""
        space = space or self.space
        same = self.path is not None and space_to_dict(space) == self.meta["space"]
        runtime = self.runtime
        if space.name not in SPACES:  # a custom space: only the Python API can name it
            out = f", out={str(self.path)!r}" if same else ""
            rt = "" if runtime.is_eager else f", runtime={runtime!r}"
            return (f"lut.build_table(<space {space.name!r}>, {self.device!r}, "
                    f"batch={self.batch}, dtype={self.dtype!r}, threads={self.threads}{rt}{out})")
        h, w = space.skeleton.input_size
        cmd = (f"nas lut build --device {self.device} --space {space.name} --input {h}x{w} "
               f"--batch {self.batch} --dtype {self.dtype} --threads {self.threads}"
               f"{runtime.flags()}")
        return cmd + (f" --out {self.path}" if same else "")

    # -- rows --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._latency)

    def __contains__(self, key: str) -> bool:
        return key in self._latency

    def latency_ms(self, key: str) -> float:
        """The row's median in ms; KeyError if the table has no such row."""
        return self._latency[key]

    def missing(self, space: SearchSpace | None = None) -> list[RowShape]:
        """Rows ``space`` (default: the table's own) needs that the table does not hold."""
        return [r for r in space_rows(space or self.space) if r.key not in self._latency]

    def with_rows(self, timings: Mapping[RowShape, Timing]) -> LatencyTable:
        """A new table with these rows added (replacing rows with the same key)."""
        stamp = _now()
        low = LOW_COLUMNS if any(r.low_chs for r in timings) else []
        new = pd.DataFrame([_row_record(r, t, stamp) for r, t in timings.items()],
                           columns=COLUMNS + low)
        kept = self.rows[~self.rows["key"].isin(new["key"])]
        rows = pd.concat([kept, new], ignore_index=True) if len(kept) else new
        return LatencyTable(rows, dict(self.meta), self.path)

    def with_meta(self, **updates) -> LatencyTable:
        return LatencyTable(self.rows, {**self.meta, **updates}, self.path)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def empty(cls, space: SearchSpace, *, device: str, batch: int, dtype: str, threads: int,
              clock: str, fingerprint: dict, runtime: dict | None = None,
              timing: dict | None = None, path: Path | None = None,
              backend: dict | None = None) -> LatencyTable:
        """``runtime``: the settings in force (``lut.device.runtime``); ``backend``: the
        runtime measured in (``lut.runtimes.Runtime.meta``; None for eager)."""
        meta = {"schema": SCHEMA, "device": canonical_device(device), "dtype": dtype,
                "batch": batch, "threads": threads, "clock": clock, "fingerprint": fingerprint,
                "runtime": runtime or {}, "timing": timing or {}, "space": space_to_dict(space),
                "calibration": None, "created": _now()}
        if backend is not None:
            meta["backend"] = backend
        return cls(_empty_rows(), meta, path)

    @classmethod
    def from_rows(cls, space: SearchSpace, latencies: Mapping[str, float], *,
                  calibration: Calibration | None = Calibration(1.0, 0.0), device: str = "cpu",
                  batch: int = 1, dtype: str = "fp32", threads: int = 1,
                  fingerprint: dict | None = None) -> LatencyTable:
        """An in-memory table from ``{row_key: ms}`` (synthetic tables, tests, other tools)."""
        timings = {}
        for key, ms in latencies.items():
            timings[parse_row_key(key)] = Timing(float(ms), float(ms), float(ms), 1)
        table = cls.empty(space, device=device, batch=batch, dtype=dtype, threads=threads,
                          clock="given", fingerprint=fingerprint or {"type": "synthetic"})
        table = table.with_rows(timings)
        return table.with_meta(calibration=calibration.to_dict() if calibration else None)

    # -- storage -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("no path to save the table to")
        rows = self.rows[COLUMNS + [c for c in LOW_COLUMNS if c in self.rows.columns]]
        if "low_chs" in rows.columns:   # rows without a low-level feature: 0, not NaN
            rows = rows.fillna({c: 0 for c in LOW_COLUMNS}).astype({c: "int64"
                                                                    for c in LOW_COLUMNS})
        arrow = pa.Table.from_pandas(rows, preserve_index=False)
        metadata = dict(arrow.schema.metadata or {})
        metadata[META_KEY] = json.dumps(self.meta, default=str).encode()
        buf = io.BytesIO()
        pq.write_table(arrow.replace_schema_metadata(metadata), buf)
        write_atomic(path, buf.getvalue())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, allow_foreign: bool = False) -> LatencyTable:
        """Read and validate a table; ``allow_foreign`` accepts one from another device."""
        path = Path(path)
        rows, meta = _read(path)
        _check_meta(meta, path)
        _check_rows(rows, path)
        table = cls(rows, meta, path)
        differs = _foreign_fields(table)
        if differs and not allow_foreign:
            raise NasError(_foreign_message(
                table, differs, f"build a table here with `nas lut build --device "
                                f"{table.device}{table.runtime.flags()}` or pass "
                                f"--allow-foreign-lut to use it anyway"))
        table.foreign = bool(differs)
        return table


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read(path: Path) -> tuple[pd.DataFrame, dict]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NasError(f"{path}: cannot read latency table ({e.strerror})") from None
    try:
        arrow = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise NasError(f"{path}: not a readable latency table, the Parquet file is corrupt or "
                       f"truncated ({_one_line(e)})") from None
    raw = (arrow.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise NasError(f"{path}: Parquet file without latency-table metadata "
                       "(not written by `nas lut build`)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NasError(f"{path}: latency-table metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise NasError(f"{path}: latency-table metadata is {type(meta).__name__}, expected an "
                       "object")
    return arrow.to_pandas(), meta


def _check_meta(meta: dict, path: Path) -> None:
    if meta.get("schema") != SCHEMA:
        raise NasError(f"{path}: schema {meta.get('schema')!r}, expected {SCHEMA!r} "
                       "(rebuild the table with `nas lut build`)")
    for key in _REQUIRED_META:
        if key not in meta:
            raise NasError(f"{path}: metadata field {key!r} is missing")
    try:
        canonical_device(meta["device"])
    except NasError as e:
        raise NasError(f"{path}: metadata field 'device': {e}") from None
    for key in ("batch", "threads"):
        v = meta[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise NasError(f"{path}: metadata field {key!r} = {v!r}: expected a positive integer")
    if not isinstance(meta["fingerprint"], dict):
        raise NasError(f"{path}: metadata field 'fingerprint' = {meta['fingerprint']!r}: "
                       "expected an object")
    try:
        space_from_dict(meta["space"])
    except (KeyError, TypeError, ValueError, NasError) as e:
        raise NasError(f"{path}: metadata field 'space' is malformed ({_one_line(e)})") from None
    if meta.get("calibration") is not None:
        Calibration.from_dict(meta["calibration"], str(path))
    from lut.runtimes import Runtime

    Runtime.from_meta(meta, str(path))


def _check_rows(rows: pd.DataFrame, path: Path) -> None:
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise NasError(f"{path}: column {missing[0]!r} is missing; expected columns "
                       f"{', '.join(COLUMNS)}")
    dup = rows["key"][rows["key"].duplicated()]
    if len(dup):
        raise NasError(f"{path}: row {dup.iloc[0]!r} appears more than once")
    for col in _LATENCY_COLUMNS:
        values = pd.to_numeric(rows[col], errors="coerce")
        bad = rows["key"][~(values > 0) | ~values.map(math.isfinite)]
        if len(bad):
            key = bad.iloc[0]
            value = rows.loc[bad.index[0], col]
            try:
                value = float(value)
            except (TypeError, ValueError):
                pass
            raise NasError(f"{path}: row {key!r}: {col} = {value!r}; expected a positive, "
                           "finite number of milliseconds")
    low = rows[LOW_COLUMNS].fillna(0).astype(int) if "low_chs" in rows.columns \
        else pd.DataFrame(0, rows.index, LOW_COLUMNS)
    shaped = pd.concat([rows[["key", "op", "in_chs", "out_chs", "stride", "in_h", "in_w"]], low],
                       axis=1)
    for rec in shaped.itertuples():
        expected = row_key(rec.op, int(rec.in_chs), int(rec.out_chs), int(rec.stride),
                           (int(rec.in_h), int(rec.in_w)), int(rec.low_chs),
                           (int(rec.low_h), int(rec.low_w)))
        if rec.key != expected:
            raise NasError(f"{path}: row {rec.key!r} does not match its columns "
                           f"(they say {expected!r})")


def here_fingerprint(device: str, threads: int, runtime=None) -> dict:
    """This machine's fingerprint for ``device`` in ``runtime`` (``lut.runtimes.Runtime``,
    default eager); a stand-in saying so when it has no such device, or no such runtime."""
    try:
        dev = parse_device(device)
    except NasError:
        return {"type": device.split(":")[0], "gpu_name": "none (no such device here)"}
    try:
        return fingerprint(dev, threads, runtime)
    except ImportError:
        return {**fingerprint(dev, threads), "runtime": f"{runtime.name} (not installed here)"}


def _foreign_fields(table: LatencyTable) -> list[str]:
    return foreign_fields(table.fingerprint,
                          here_fingerprint(table.device, table.threads, table.runtime))


def foreign_message(table: LatencyTable, remedy: str) -> str | None:
    """Why ``table`` is another device's, naming both fingerprints, then ``remedy`` (what the
    command at hand lets the user do about it); None for a table of this machine."""
    differs = _foreign_fields(table)
    return _foreign_message(table, differs, remedy) if differs else None


def _foreign_message(table: LatencyTable, differs: list[str], remedy: str) -> str:
    here = here_fingerprint(table.device, table.threads, table.runtime)
    differences = describe_differences(table.fingerprint, here)
    return f"{table.path}: table was measured on another device ({differences}); {remedy}"
