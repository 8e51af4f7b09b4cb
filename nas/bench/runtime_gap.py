"""The runtime gap: the same networks in PyTorch eager and in ONNX Runtime, side by side.

``runtime_gap(space, eager_table, ort_table, networks=30)`` draws random networks of ``space``
and times them in one interleaved measurement (``lut.timing.measure``: every round runs every
network in both runtimes, in a fresh random order, one thread, thread-CPU-time clock), then
reports:

- the ratio ONNX Runtime / eager per network (median, p10, p90, range);
- Kendall's tau between the two latency orders (and the share of network pairs the two
  runtimes order differently);
- each table's fidelity on its own runtime, by its own validation (``lut.validate``: the same
  number of random networks, measured with the table's method, one runtime per measurement:
  median and p90 relative error, share within 10%, tau); and, on the side-by-side measurement,
  each table's error (its rounds hold twice as many networks, both runtimes' weights, so caches
  are colder than in the rounds a table is calibrated in) and the eager table's tau against
  ONNX Runtime's measurements: what ranking candidates by eager latency costs a deployment in
  ONNX Runtime;
- ``nas bench`` (``lut.bench``) on the first ``bench_check`` networks of each validation, in
  the validation's runtime: whether the validation's median lies inside bench's p10-p90;
- for the first ``export_check`` networks, ONNX Runtime's latency of the network exported in one
  piece (as ``nas export`` writes it) against the chain of its rows' graphs that calibration,
  validation and the search measure (``lut.ort``), in the same rounds.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.stats import kendalltau

from lut.device import runtime as settings_for
from lut.predictor import LatencyPredictor
from lut.runtimes import EAGER
from lut.timing import TimingConfig, measure
from lut.validate import error_metrics
from supernets.flops import complexity

__all__ = ["render", "runtime_gap"]


def _summary(values) -> dict:
    v = np.asarray(values, float)
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return {"median": float(p50), "p10": float(p10), "p90": float(p90), "min": float(v.min()),
            "max": float(v.max())}


def _bench_check(table, report, count: int, progress) -> list[dict]:
    """``nas bench`` on the first ``count`` networks of a validation, in its runtime."""
    import json

    from lut.bench import BenchModel, bench

    space = table.space
    out = []
    for row in report.networks.head(count).itertuples():
        spec = space.spec(json.loads(row.choices), row.name)
        if progress:
            progress(f"nas bench {spec.name} in {table.runtime.describe()}")
        b = bench(BenchModel(spec.name, "arch", spec, spec.skeleton.input_size), table.device,
                  runtime=table.runtime, batch=table.batch, dtype=table.dtype,
                  threads=table.threads)
        out.append({"network": spec.name, "validation_ms": float(row.measured_ms),
                    "bench_ms": b["median_ms"], "bench_p10_ms": b["p10_ms"],
                    "bench_p90_ms": b["p90_ms"],
                    "inside": bool(b["p10_ms"] <= row.measured_ms <= b["p90_ms"])})
    return out


def runtime_gap(space, eager_table, ort_table, *, networks: int = 30, seed: int = 2,
                rounds: int = 100, export_check: int = 8, validate: bool = True,
                bench_check: int = 3, progress=None) -> dict:
    """Measure and compare (see the module docstring); returns a JSON-ready dict."""
    ort_rt = ort_table.runtime
    rng = np.random.default_rng(seed)
    specs = [space.sample(rng, f"gap-{i}") for i in range(networks)]
    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    threads = eager_table.threads
    started = time.perf_counter()
    if progress:
        progress(f"exporting {min(export_check, networks)} networks in one piece (nas export's "
                 "graphs) and building the chains of the rest")
    with settings_for(dev, threads):
        eager_calls = EAGER.network_calls(specs, dev, torch.float32, 1, gen, threads)
        chain_calls = ort_rt.network_calls(specs, dev, torch.float32, 1, gen, threads)
        export_calls = ort_rt.network_calls(specs[:export_check], dev, torch.float32, 1, gen,
                                            threads, how="export")
        calls = {}
        for i in range(networks):
            calls[f"eager:{i}"] = eager_calls[i]
            calls[f"ort:{i}"] = chain_calls[i]
        for i in range(len(export_calls)):
            calls[f"export:{i}"] = export_calls[i]
        if progress:
            progress(f"timing {len(calls)} calls x {rounds} rounds, interleaved")
        timing = TimingConfig(rounds=rounds, seed=seed)
        clock = EAGER.clock("auto", dev, threads)
        t = measure(calls, dev, timing, clock=clock)
    eager = np.array([t[f"eager:{i}"].median_ms for i in range(networks)])
    onnx = np.array([t[f"ort:{i}"].median_ms for i in range(networks)])
    ratio = onnx / eager
    tau = float(kendalltau(eager, onnx).statistic)
    eager_pred = LatencyPredictor(eager_table)
    ort_pred = LatencyPredictor(ort_table)
    pe = np.array([eager_pred.latency(s) for s in specs])
    po = np.array([ort_pred.latency(s) for s in specs])
    macs = np.array([complexity(s).macs for s in specs], float)
    validation = {}
    if validate:
        from lut.validate import validate_table

        for name, table in (("eager", eager_table), ("onnxruntime", ort_table)):
            if progress:
                progress(f"validating the {name} table on {networks} networks of its own")
            report = validate_table(table, samples=networks, seed=seed + 100, progress=False)
            validation[name] = {"metrics": report.metrics["table"],
                                "flops": report.metrics["flops"],
                                "files": str(report.json_path),
                                "bench": _bench_check(table, report, bench_check, progress)}
    export = [{"network": specs[i].name, "export_ms": t[f"export:{i}"].median_ms,
               "chain_ms": t[f"ort:{i}"].median_ms,
               "export_over_chain": t[f"export:{i}"].median_ms / t[f"ort:{i}"].median_ms,
               "chain_p10_ms": t[f"ort:{i}"].p10_ms, "chain_p90_ms": t[f"ort:{i}"].p90_ms}
              for i in range(len(export_calls))]
    rows = [{"network": s.name, "macs": float(m), "eager_ms": float(e),
             "eager_p10_ms": t[f"eager:{i}"].p10_ms, "eager_p90_ms": t[f"eager:{i}"].p90_ms,
             "ort_ms": float(o), "ort_p10_ms": t[f"ort:{i}"].p10_ms,
             "ort_p90_ms": t[f"ort:{i}"].p90_ms, "ratio": float(r),
             "eager_table_ms": float(a), "ort_table_ms": float(b), "choices": dict(s.choices)}
            for i, (s, m, e, o, r, a, b) in enumerate(zip(specs, macs, eager, onnx, ratio, pe,
                                                          po))]
    return {
        "space": space.name, "input_size": list(space.skeleton.input_size),
        "networks": networks, "seed": seed, "rounds": rounds, "threads": threads,
        "clock": clock, "eager": EAGER.describe(), "onnxruntime": ort_rt.describe(),
        "eager_ms": _summary(eager), "ort_ms": _summary(onnx),
        "ratio_ort_over_eager": _summary(ratio),
        "kendall_tau_eager_vs_ort": tau, "discordant_pairs": (1 - tau) / 2,
        "validation": validation,
        "fidelity": {
            "eager_table_on_eager": error_metrics(pe, eager),
            "ort_table_on_ort": error_metrics(po, onnx),
            "eager_table_on_ort_tau": float(kendalltau(pe, onnx).statistic),
            "macs_on_eager_tau": float(kendalltau(macs, eager).statistic),
            "macs_on_ort_tau": float(kendalltau(macs, onnx).statistic),
        },
        "export_vs_chain": {"networks": export, "ratio": _summary(
            [e["export_over_chain"] for e in export]) if export else None,
            "within_chain_p10_p90": sum(e["chain_p10_ms"] <= e["export_ms"] <= e["chain_p90_ms"]
                                        for e in export)},
        "rows": rows, "seconds": round(time.perf_counter() - started, 1),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(r: dict, *, command: str, machine: str, tables: dict) -> str:
    """The markdown report."""
    ratio, f = r["ratio_ort_over_eager"], r["fidelity"]
    h, w = r["input_size"]
    ev = r["export_vs_chain"]
    lines = [
        "# Runtime gap: PyTorch eager vs ONNX Runtime on the same networks", "",
        f"{r['networks']} random networks of `{r['space']}` at {h}x{w} (seed {r['seed']}), batch "
        f"1, fp32, {r['threads']} thread, measured side by side in one process: every round "
        f"runs every network in both runtimes in a fresh random order ({r['rounds']} rounds, "
        f"clock `{r['clock']}`, medians).", "",
        f"- eager: {r['eager']} (inference mode); ONNX Runtime: {r['onnxruntime']}, every "
        "graph optimisation on, one intra-op thread, sequential execution.",
        f"- machine: {machine}",
        f"- command: `{command}` ({r['seconds']:.0f} s)",
        f"- tables: eager `{tables['eager']}`, ONNX Runtime `{tables['onnxruntime']}`", "",
        "## The gap", "",
        "| | median | p10 | p90 | min | max |", "|---|---|---|---|---|---|",
        *(f"| {label} | {d['median']:.3f} | {d['p10']:.3f} | {d['p90']:.3f} | {d['min']:.3f} "
          f"| {d['max']:.3f} |" for label, d in (("eager (ms)", r["eager_ms"]),
                                                 ("ONNX Runtime (ms)", r["ort_ms"]),
                                                 ("ONNX Runtime / eager", ratio))), "",
        f"Kendall tau between the eager and the ONNX Runtime latency orders: "
        f"**{r['kendall_tau_eager_vs_ort']:.3f}** ({_pct(r['discordant_pairs'])} of network "
        "pairs are ordered differently by the two runtimes).", "",
        "## Each table on its own runtime", "",
        "| table, judged on | median abs. error | p90 | within 10% | Kendall tau |",
        "|---|---|---|---|---|",
        *(f"| {label} | {_pct(m['median_abs_rel_error'])} | {_pct(m['p90_abs_rel_error'])} | "
          f"{100 * m['within_10pct']:.0f}% | {m['kendall_tau']:.3f} |"
          for label, m in (
              *((f"{name} table: its validation ({r['networks']} networks of its own, one "
                 "runtime per measurement)", v["metrics"])
                for name, v in r.get("validation", {}).items()),
              ("eager table, on the side-by-side measurement", f["eager_table_on_eager"]),
              ("ONNX Runtime table, on the side-by-side measurement", f["ort_table_on_ort"]))),
        "",
        *(f"`nas bench` on {len(v['bench'])} of the {name} validation's networks (in "
          f"{'ONNX Runtime as `nas export` writes them' if name == 'onnxruntime' else 'eager'}): "
          + "; ".join(f"{b['network']} bench {b['bench_ms']:.3f} ms (p10-p90 "
                      f"{b['bench_p10_ms']:.3f}-{b['bench_p90_ms']:.3f}) vs validation "
                      f"{b['validation_ms']:.3f} ({'inside' if b['inside'] else 'OUTSIDE'})"
                      for b in v["bench"]) + "." + "\n"
          for name, v in r.get("validation", {}).items() if v.get("bench")),
        "The side-by-side rounds hold both runtimes' networks (twice the weights a table's "
        "calibration rounds cycle through), so every network runs with colder caches there and "
        "reads slower than its table predicts; the validations measure each runtime as its "
        "table was calibrated.", "",
        f"Ranked by the eager table, the same networks order as measured in ONNX Runtime at tau "
        f"{f['eager_table_on_ort_tau']:.3f}; by MACs at tau {f['macs_on_ort_tau']:.3f} (eager: "
        f"{f['macs_on_eager_tau']:.3f}).", "",
    ]
    if ev["networks"]:
        er = ev["ratio"]
        lines += [
            "## Whole-network export vs the chain of row graphs", "",
            "Calibration, validation, the speed probe and the search's measured checks run a "
            "network in ONNX Runtime as the chain of its rows' exported graphs (free once the "
            "rows are exported); `nas export` and `nas bench` export it in one piece. In the "
            f"same rounds, for {len(ev['networks'])} of the networks: one-piece / chain median "
            f"{er['median']:.3f} (range {er['min']:.3f}-{er['max']:.3f}); "
            f"{ev['within_chain_p10_p90']} of {len(ev['networks'])} one-piece medians lie "
            "inside the chain's p10-p90.", "",
            "| network | chain (ms) | one piece (ms) | ratio |", "|---|---|---|---|",
            *(f"| {e['network']} | {e['chain_ms']:.3f} | {e['export_ms']:.3f} | "
              f"{e['export_over_chain']:.3f} |" for e in ev["networks"]), "",
        ]
    lines += ["## Networks", "",
              "| network | MMACs | eager (ms) | ONNX Runtime (ms) | ratio | eager table | "
              "ONNX Runtime table |", "|---|---|---|---|---|---|---|",
              *(f"| {x['network']} | {x['macs'] / 1e6:.1f} | {x['eager_ms']:.3f} | "
                f"{x['ort_ms']:.3f} | {x['ratio']:.3f} | {x['eager_table_ms']:.3f} | "
                f"{x['ort_table_ms']:.3f} |" for x in r["rows"]), ""]
    return "\n".join(lines)
