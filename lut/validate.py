"""Does a table predict measured latency? Random networks, measured end to end, side by side.

``validate_table(table, samples=30)`` draws ``samples`` random networks of the table's space with
``seed`` (the build calibrates with seed 0 and validation defaults to seed 1, so these are other
networks), measures them end to end with the table's timing method, and compares three
predictions with the measurements:

    table         the table's prediction, ``LatencyPredictor.latency`` (its calibration method,
                  chosen at build time by leave-one-out error: raw or affine)
    table_raw     the plain sum of rows
    table_affine  the affine calibration ``a * sum + b`` fitted at build time (reported whichever
                  method the table chose, so the choice can be checked)
    flops         latency proportional to MACs, scaled from one reference network measured in
                  the same rounds (what one does without a table)
    table_probed  the table's prediction times the speed probe's ratio taken just before (only
                  when a probe ran): what ``nas search`` predicts before its own measurements,
                  since it corrects the table by the probe (a GPU host's eager timings drift by
                  a few percent between the build and the validation; the probe sees that)

For each: median and p90 of |predicted - measured| / measured, the share within 10%, and Kendall's
tau between predicted and measured. A CSV (one line per network) and a scatter plot (PNG) are
written next to the table as ``<table>.validation.csv`` / ``.png``, plus the summary as JSON.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import kendalltau

from lut.build import measure_networks
from lut.predictor import LatencyPredictor
from lut.table import LatencyTable
from lut.timing import TimingConfig
from supernets.errors import NasError
from supernets.fileio import check_writable_dir, write_atomic
from supernets.flops import complexity
from supernets.spec import ArchSpec

__all__ = ["METHODS", "PROBED", "ValidationReport", "error_metrics", "validate_table"]

METHODS = ("table", "table_raw", "table_affine", "flops")
PROBED = "table_probed"


def error_metrics(predicted, measured) -> dict:
    """Median and p90 absolute relative error, share within 10%, Kendall's tau."""
    pred, meas = np.asarray(predicted, float), np.asarray(measured, float)
    err = np.abs(pred - meas) / meas
    tau = kendalltau(pred, meas).statistic if len(pred) > 1 else float("nan")
    return {"median_abs_rel_error": float(np.median(err)),
            "p90_abs_rel_error": float(np.percentile(err, 90)),
            "within_10pct": float(np.mean(err <= 0.10)),
            "kendall_tau": float(tau)}


@dataclass
class ValidationReport:
    networks: pd.DataFrame      # one row per network
    metrics: dict[str, dict]    # method -> error_metrics
    reference: dict             # the FLOPs estimate's reference network
    csv_path: Path | None
    png_path: Path | None
    json_path: Path | None
    settings: dict

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "reference": self.reference,
                "samples": len(self.networks), "csv": str(self.csv_path),
                "png": str(self.png_path), "json": str(self.json_path), **self.settings}


def _scatter_png(df: pd.DataFrame, metrics: dict, title: str) -> bytes:
    fig = Figure(figsize=(6.4, 5.2), dpi=110)
    ax = fig.add_subplot()
    lo = 0.9 * float(df[["measured_ms", "table_ms", "flops_ms"]].min().min())
    hi = 1.1 * float(df[["measured_ms", "table_ms", "flops_ms"]].max().max())
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(line, 0.9 * line, 1.1 * line, color="grey", alpha=0.2, label="±10%")
    for method, marker, color in (("table", "o", "tab:blue"), ("flops", "x", "tab:orange")):
        m = metrics[method]
        ax.scatter(df["measured_ms"], df[f"{method}_ms"], marker=marker, color=color,
                   label=(f"{method}: median err {100 * m['median_abs_rel_error']:.1f}%, "
                          f"{100 * m['within_10pct']:.0f}% within 10%, "
                          f"tau {m['kendall_tau']:.2f}"))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _outputs(table: LatencyTable, out_dir: Path | None) -> tuple[Path, Path, Path] | None:
    """``<dir>/<table stem>.validation.{csv,png,json}``; None for an in-memory table."""
    if table.path is None and out_dir is None:
        return None
    folder = Path(out_dir) if out_dir is not None else table.path.parent
    stem = table.path.stem if table.path is not None else "table"
    return tuple(folder / f"{stem}.validation.{ext}" for ext in ("csv", "png", "json"))


@dataclass(frozen=True)
class Preflight:
    """What ``preflight`` checked and ``validate_table`` measures."""

    predictor: LatencyPredictor
    reference: ArchSpec                  # the FLOPs estimate's reference network
    specs: list[ArchSpec]                # the networks to validate
    predicted: list[float]               # their predicted latency (ms)
    paths: tuple[Path, ...] | None       # CSV, PNG, JSON


def preflight(table: LatencyTable, *, samples: int = 30, seed: int = 1,
              out_dir: Path | None = None) -> Preflight:
    """What can fail before anything is measured, checked in a moment: the sample count, a
    table without calibration or missing a row the sampled networks need, and an output folder
    that takes no files. ``nas lut validate`` runs it before the speed probe and hands the
    result to ``validate_table``."""
    if samples < 2:
        raise NasError(f"--samples {samples}: expected at least 2 networks")
    predictor = LatencyPredictor(table)  # refuses an uncalibrated table, names missing rows
    rng = np.random.default_rng(seed)
    reference = table.space.sample(rng, "flops-reference")
    specs = [table.space.sample(rng, f"validation-{i}") for i in range(samples)]
    predicted = [predictor.latency(s) for s in specs]  # fail on a missing row before measuring
    paths = _outputs(table, out_dir)
    if paths:  # and on a folder the results cannot be written to
        check_writable_dir(paths[0].parent, f"{table.where()}: the validation files go to")
        for path in paths:
            if path.is_dir():
                raise NasError(f"{path}: is a directory, where the validation writes a file")
    return Preflight(predictor, reference, specs, predicted, paths)


def validate_table(table: LatencyTable, *, samples: int = 30, seed: int = 1,
                   timing: TimingConfig | None = None, out_dir: Path | None = None,
                   progress: bool = True, probe: dict | None = None,
                   checked: Preflight | None = None) -> ValidationReport:
    """Measure ``samples`` random networks and compare predictions; writes CSV, PNG, JSON.

    ``probe``: the speed probe's result (``ProbeResult.to_dict()``) taken just before, kept in
    the report; ``checked``: ``preflight``'s result for these arguments, when taken already."""
    checked = checked or preflight(table, samples=samples, seed=seed, out_dir=out_dir)
    predictor, reference, specs, predicted, paths = (
        checked.predictor, checked.reference, checked.specs, checked.predicted, checked.paths)
    raw = [predictor.raw_latency(s) for s in specs]
    cal = predictor.calibration
    a, b = cal.affine if cal.affine is not None else (cal.a, cal.b)
    timing = timing or TimingConfig(**{**table.meta.get("timing", {}), "seed": seed})
    measured = measure_networks([reference, *specs], table.device, batch=table.batch,
                                dtype=table.dtype, threads=table.threads, timing=timing,
                                progress=progress, desc="validation", runtime=table.runtime)
    ref_t, measured = measured[0], measured[1:]
    ref_macs = complexity(reference, table.batch).macs
    macs = [complexity(s, table.batch).macs for s in specs]
    df = pd.DataFrame({
        "name": [s.name for s in specs],
        "macs": macs,
        "measured_ms": [t.median_ms for t in measured],
        "measured_p10_ms": [t.p10_ms for t in measured],
        "measured_p90_ms": [t.p90_ms for t in measured],
        "table_ms": predicted,
        "table_raw_ms": raw,
        "table_affine_ms": [a * r + b for r in raw],
        "flops_ms": [ref_t.median_ms * m / ref_macs for m in macs],
        "choices": [json.dumps(dict(s.choices)) for s in specs],
    })
    methods = METHODS
    if probe and probe.get("ratio"):
        df[f"{PROBED}_ms"] = df["table_ms"] * float(probe["ratio"])
        methods = (*METHODS, PROBED)
    for method in methods:
        df[f"{method}_rel_error"] = (df[f"{method}_ms"] - df["measured_ms"]) / df["measured_ms"]
    metrics = {m: error_metrics(df[f"{m}_ms"], df["measured_ms"]) for m in methods}
    ref = {"name": reference.name, "macs": ref_macs, "measured_ms": ref_t.median_ms,
           "choices": dict(reference.choices)}
    settings = {"table": str(table.path), "device": table.device,
                "runtime": table.runtime.describe(), "batch": table.batch,
                "dtype": table.dtype, "threads": table.threads, "clock": table.clock,
                "seed": seed, "rounds": timing.rounds, "calibration_method": cal.method,
                "calibration_loo": cal.loo, "probe": probe}
    report = ValidationReport(df, metrics, ref, *(paths or (None, None, None)), settings)
    if paths:
        csv_path, png_path, json_path = paths
        write_atomic(csv_path, df.to_csv(index=False))
        space = table.space
        h, w = space.skeleton.input_size
        title = (f"{space.name} {h}x{w}, batch {table.batch}, {table.dtype}, {table.device}, "
                 f"{table.threads} thread(s), {table.runtime.describe()}: {samples} random "
                 "networks")
        write_atomic(png_path, _scatter_png(df, metrics, title))
        write_atomic(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report
