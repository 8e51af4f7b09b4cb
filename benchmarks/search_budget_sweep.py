"""Budgets across the space's range: is the derived network's *measured* latency on budget?

For budgets spread between the fastest and the slowest network of the space (as the device's
latency table predicts them), run a short ``nas search`` each and measure the derived network end
to end with the table's timing method. Target: measured / budget in [0.85, 1.0], with 5% allowed
for measurement noise, i.e. [0.80, 1.05].

    python benchmarks/search_budget_sweep.py [--space cpu-small] [--points 5] [--epochs 2] \
        [--out results/benchmarks/search_budget_sweep.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lut as lutlib
from nas.search import SearchConfig, search
from supernets.space import get_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="cpu-small")
    ap.add_argument("--lut")
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/benchmarks/search_budget_sweep.json")
    args = ap.parse_args()
    space = get_space(args.space)
    lut_path = Path(args.lut) if args.lut else lutlib.default_table_path(space, "cpu")
    predictor = lutlib.LatencyPredictor(lutlib.LatencyTable.load(lut_path))
    (_, fast), (_, slow) = predictor.bounds(space)
    # from just above the fastest to just below the slowest network
    budgets = np.linspace(fast / 0.9, slow * 0.95, args.points)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, budget in enumerate(budgets):
            t0 = time.perf_counter()
            cfg = SearchConfig(budget_ms=float(budget), space=args.space, epochs=args.epochs,
                               train_samples=args.train_samples, batch_size=args.batch_size,
                               seed=args.seed)
            r = search(cfg, Path(tmp) / f"b{i}", lut=str(lut_path), progress=False)
            ratio = r["measured_ms"] / budget
            rows.append({"budget_ms": float(budget), "predicted_ms": r["predicted_ms"],
                         "measured_ms": r["measured_ms"],
                         "measured_p10_ms": r["measured"].get("p10_ms"),
                         "measured_p90_ms": r["measured"].get("p90_ms"),
                         "predicted_over_budget": r["predicted_ms"] / budget,
                         "measured_over_budget": ratio,
                         "in_target": 0.80 <= ratio <= 1.05,
                         "arch": r["arch"]["choices"], "seconds": time.perf_counter() - t0})
            print(f"budget {budget:.2f} ms: predicted {r['predicted_ms']:.2f}, measured "
                  f"{r['measured_ms']:.2f} ms = {ratio:.3f} x budget", file=sys.stderr)
    ratios = [r["measured_over_budget"] for r in rows]
    report = {
        "what": "measured latency of the derived network / budget, budgets across the space",
        "target": "[0.85, 1.0] with 5% measurement noise allowed: [0.80, 1.05]",
        "space": args.space, "lut": str(lut_path), "space_fastest_ms": fast,
        "space_slowest_ms": slow, "search_epochs": args.epochs,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "command": " ".join(["python", *sys.argv]),
        "summary": {"in_target": int(sum(r["in_target"] for r in rows)), "of": len(rows),
                    "min_ratio": min(ratios), "max_ratio": max(ratios),
                    "median_ratio": float(np.median(ratios))},
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report["summary"]))


if __name__ == "__main__":
    main()
