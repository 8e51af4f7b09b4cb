"""Build the same latency table twice in a row and compare the rows.

    python benchmarks/lut_repeatability.py [--space cpu-small] [--device cpu] [--rounds N]

Target: median row difference at most 5%, each build within 10 minutes. Both tables are written
beside the default table's folder (``results/lut/<device>/repeatability/``) with a JSON report
and a short markdown summary.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lut import LatencyTable, TimingConfig, build_table, default_table_path
from supernets.fileio import write_atomic
from supernets.space import SPACES, get_space


def compare(a: LatencyTable, b: LatencyTable) -> dict:
    ma = a.rows.set_index("key")["median_ms"]
    mb = b.rows.set_index("key")["median_ms"].reindex(ma.index)
    rel = (mb - ma).abs() / ((ma + mb) / 2)
    ratio = mb / ma
    return {"rows": len(ma),
            "median_rel_diff": float(rel.median()),
            "p90_rel_diff": float(rel.quantile(0.9)),
            "max_rel_diff": float(rel.max()),
            "median_ratio_second_over_first": float(ratio.median()),
            "calibration": {"first": [a.calibration.a, a.calibration.b],
                            "second": [b.calibration.a, b.calibration.b]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="cpu-small", choices=list(SPACES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=TimingConfig().rounds)
    args = parser.parse_args()

    space = get_space(args.space)
    folder = default_table_path(space, args.device).parent / "repeatability"
    tables, seconds = [], []
    for i in (1, 2):
        out = folder / f"{space.name}-build{i}.parquet"
        t0 = time.perf_counter()
        build_table(space, args.device, out=out, resume=False,
                    timing=TimingConfig(rounds=args.rounds))
        seconds.append(round(time.perf_counter() - t0, 1))
        tables.append(LatencyTable.load(out))
    result = {"space": space.name, "device": args.device, "rounds": args.rounds,
              "build_seconds": seconds, **compare(*tables),
              "conditions": [t.meta.get("conditions") for t in tables]}
    write_atomic(folder / "repeatability.json", json.dumps(result, indent=2) + "\n")
    ok = result["median_rel_diff"] <= 0.05 and max(seconds) <= 600
    summary = (f"# LUT repeatability: {space.name} on {args.device}\n\n"
               f"Two builds in a row (`python benchmarks/lut_repeatability.py --space "
               f"{space.name} --device {args.device} --rounds {args.rounds}`):\n\n"
               f"- build times: {seconds[0]:.0f} s and {seconds[1]:.0f} s (target <= 600 s)\n"
               f"- median row difference: {100 * result['median_rel_diff']:.1f}% "
               f"(target <= 5%); p90 {100 * result['p90_rel_diff']:.1f}%, "
               f"max {100 * result['max_rel_diff']:.1f}%\n"
               f"- second build / first build, median over rows: "
               f"{result['median_ratio_second_over_first']:.3f}\n"
               f"- calibration (a, b): first {np.round(result['calibration']['first'], 3)}, "
               f"second {np.round(result['calibration']['second'], 3)}\n"
               f"- targets met: {'yes' if ok else 'NO'}\n")
    write_atomic(folder / "REPEATABILITY.md", summary)
    print(summary)


if __name__ == "__main__":
    main()
