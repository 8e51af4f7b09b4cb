"""Does the README's first command keep its promise on *this* machine? The budget targets, measured.

Run in a fresh clone (or any checkout) after the README's install line:

    python benchmarks/budget_check.py [--budget 3ms] [--samples 30] \
        [--out results/benchmarks/budget_check.json]

Steps, each timed, all with the `nas` CLI as a user runs it:

1. ``nas lut check`` of the table ``nas search`` resolves to on this machine (the default space on
   ``cpu``), if one is there: the speed probe's ratio and its cost (target <= 5 s of measuring).
2. A rebuild of that table from scratch into a scratch file (``nas lut build --no-resume``:
   target <= 2 min on 2 cores).
3. ``nas search --task pose --budget 3ms`` exactly as in the README, in a scratch folder that
   holds a copy of the repository's ``results/lut`` (so the committed tables are what it finds):
   measured / budget in [0.85, 1.0] (5% noise allowed) or a clear non-zero refusal; never exit 0
   above 1.05.
4. ``nas lut validate`` of the table the search used, on 30 random networks: >= 95% within
   ±10%, median <= 5%, Kendall tau >= 0.9 and at least 0.2 above the FLOPs estimate's.

Writes the JSON given by ``--out`` and a Markdown summary beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nas(args: list[str], cwd: Path) -> tuple[int, dict | None, str, float]:
    """Run ``nas ARGS --json`` in ``cwd``: (exit status, JSON object or None, stderr, seconds)."""
    argv = [sys.executable, "-m", "nas.cli", *args, "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    print(f"  nas {' '.join(args)}: exit {done.returncode}, {seconds:.1f} s", file=sys.stderr)
    return done.returncode, data, done.stderr.strip(), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="3ms")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "results/benchmarks/budget_check.json")
    args = ap.parse_args()

    import torch

    from lut.build import default_table_path
    from lut.fingerprint import describe, fingerprint
    from nas.search import SearchConfig
    from supernets.space import get_space

    space_name = SearchConfig(budget_ms=1.0).space
    space = get_space(space_name)
    here = fingerprint(torch.device("cpu"), 1)
    table = default_table_path(space, "cpu", root=ROOT / "results")
    result: dict = {"machine": here, "machine_text": describe(here), "space": space_name,
                    "budget": args.budget, "python": platform.python_version(),
                    "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. the committed table of this machine, if there is one: does it still fit?
        if table.exists():
            code, data, err, seconds = nas(["lut", "check", str(table)], ROOT)
            result["committed_check"] = {"table": str(table.relative_to(ROOT)), "exit": code,
                                         "wall_s": seconds, "probe": data, "stderr": err}
        else:
            result["committed_check"] = {"table": str(table.relative_to(ROOT)),
                                         "exit": None, "note": "no committed table here"}
        # 2. a rebuild from scratch
        scratch = tmp / "rebuild.parquet"
        code, data, err, seconds = nas(["lut", "build", "--space", space_name, "--out",
                                        str(scratch), "--no-resume", "--quiet"], ROOT)
        result["rebuild"] = {"exit": code, "wall_s": seconds,
                             "build_seconds": data and data.get("build_seconds"),
                             "calibration": data and data.get("calibration"), "stderr": err}
        # 3. the README's command, where the committed tables are what it finds
        work = tmp / "work"
        shutil.copytree(ROOT / "results" / "lut", work / "results" / "lut")
        code, data, err, seconds = nas(["search", "--task", "pose", "--budget", args.budget,
                                        "--no-progress"], work)
        search = {"exit": code, "wall_s": seconds, "stderr_tail": err.splitlines()[-6:]}
        if data:
            search.update({k: data.get(k) for k in (
                "verdict", "budget_ms", "predicted_ms", "measured_ms", "measured_over_budget",
                "measure_checks", "latency_feedback", "speed_probe", "space_bounds_ms",
                "fastest_measured_ms")})
            search["lut"] = data["lut"]["path"]
        result["search"] = search
        # 4. the table the search used (rebuilt or committed), validated
        used = work / search["lut"] if data else None
        if used is not None and used.exists():
            code, vdata, err, seconds = nas(["lut", "validate", str(used), "--samples",
                                             str(args.samples), "--quiet"], work)
            result["validation"] = {"exit": code, "wall_s": seconds,
                                    "metrics": vdata and vdata["metrics"],
                                    "probe": vdata and vdata.get("probe"),
                                    "calibration_method": vdata and vdata.get(
                                        "calibration_method"), "stderr": err}
    result["targets"] = targets(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def targets(r: dict) -> dict:
    t: dict = {}
    s = r["search"]
    if s.get("measured_over_budget") is not None:
        ratio = s["measured_over_budget"]
        t["search_on_budget"] = (0.80 <= ratio <= 1.05) if s["exit"] == 0 else (ratio > 1.05)
    else:
        t["search_on_budget"] = s["exit"] not in (0, None)  # a clear refusal
    t["never_exit_0_over_1.05"] = not (s["exit"] == 0 and (s.get("measured_over_budget") or 0) >
                                       1.05)
    probe = (r.get("committed_check") or {}).get("probe") or (s.get("speed_probe") or {})
    if probe.get("seconds"):
        t["probe_at_most_5s"] = probe["seconds"] <= 5.0
    t["rebuild_at_most_120s"] = r["rebuild"]["exit"] == 0 and r["rebuild"]["wall_s"] <= 120
    v = (r.get("validation") or {}).get("metrics")
    if v:
        m, f = v["table"], v["flops"]
        t["validation"] = (m["within_10pct"] >= 0.95 and m["median_abs_rel_error"] <= 0.05
                           and m["kendall_tau"] >= 0.9
                           and m["kendall_tau"] - f["kendall_tau"] >= 0.2)
    return t


def markdown(r: dict) -> str:
    s, rb = r["search"], r["rebuild"]
    lines = [f"# Budget check: `nas search --task pose --budget {r['budget']}` on this machine",
             "", f"Machine: {r['machine_text']}; started {r['started']}. Command: "
             "`python benchmarks/budget_check.py`.", ""]
    cc = r["committed_check"]
    if cc.get("probe"):
        p = cc["probe"]
        lines.append(f"- Committed table `{cc['table']}`: speed probe {p['ratio']:.2f}x "
                     f"({'fits' if p['ok'] else 'does not fit'}; {p['seconds']:.1f} s of "
                     f"measuring, {cc['wall_s']:.1f} s for the whole `nas lut check`).")
    else:
        lines.append(f"- Committed table `{cc['table']}`: {cc.get('note') or cc.get('stderr')}.")
    lines.append(f"- Rebuild from scratch (`nas lut build --no-resume`): {rb['wall_s']:.0f} s "
                 f"wall, exit {rb['exit']}"
                 + (f"; calibration {rb['calibration']['method']}" if rb.get("calibration")
                    else "") + ".")
    if s.get("verdict"):
        checks = ", ".join(f"{c['predicted_ms']:.2f} predicted / {c['measured_ms']:.2f} measured"
                           for c in s["measure_checks"])
        lines.append(f"- Search: exit {s['exit']}, verdict **{s['verdict']}**, measured "
                     f"{s['measured_ms']:.3f} ms = **{s['measured_over_budget']:.3f} x** the "
                     f"budget ({checks}); table `{s['lut']}`; {s['wall_s']:.0f} s wall.")
    else:
        lines.append(f"- Search: exit {s['exit']}: {' / '.join(s['stderr_tail'][-1:])}; "
                     f"{s['wall_s']:.0f} s wall.")
    v = (r.get("validation") or {}).get("metrics")
    if v:
        lines.append("- Validation of that table on 30 random networks: "
                     + "; ".join(f"{k} median {100 * m['median_abs_rel_error']:.1f}%, "
                                 f"{100 * m['within_10pct']:.0f}% within ±10%, tau "
                                 f"{m['kendall_tau']:.2f}" for k, m in v.items()
                                 if k in ("table", "flops")) + ".")
    lines += ["", "Targets: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}"
                                         for k, ok in r["targets"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
