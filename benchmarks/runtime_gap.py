"""runtime_gap: random networks measured in PyTorch eager and in ONNX Runtime side by side.

Writes the ratio distribution, Kendall tau between the two latency orders, each table's fidelity
on its own runtime and the one-piece-export vs chain check to
``results/benchmarks/runtime_gap.md`` (and ``.json``). See ``nas.bench.runtime_gap``. The two
tables, eager and ONNX Runtime, are built for the space in ``--tables`` (default
``runs/runtime_gap``) in the same session as the measurement, so that both describe the machine
as it is during the run; a table there whose speed probe still passes is reused.

    python benchmarks/runtime_gap.py [--space cpu-base] [--networks 30] [--seed 2] \\
        [--rounds 100] [--export-check 8] [--tables runs/runtime_gap] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from supernets.errors import NasError
from supernets.fileio import write_atomic

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="cpu-base", help="search space (default %(default)s)")
    ap.add_argument("--networks", type=int, default=30, help="random networks (default 30)")
    ap.add_argument("--seed", type=int, default=2,
                    help="draw seed (default 2: tables calibrate with 0, validate with 1)")
    ap.add_argument("--rounds", type=int, default=100, help="timing rounds (default 100)")
    ap.add_argument("--export-check", type=int, default=8,
                    help="networks also exported in one piece (default 8)")
    ap.add_argument("--tables", default="runs/runtime_gap",
                    help="folder of the two tables (default %(default)s)")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "runtime_gap.md"))
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    if args.networks < 3 or args.rounds < 1 or args.export_check < 0:
        ap.error("--networks >= 3, --rounds >= 1, --export-check >= 0")
    return args


def log(msg: str) -> None:
    print(f"[runtime_gap {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _table(space, runtime, folder: Path):
    """This machine's table of ``space`` in ``runtime`` under ``folder``: reused if its speed
    probe passes, else built again (with its build time, which the report states)."""
    import lut as lutlib
    from lut.probe import probe_table

    path = lutlib.default_table_path(space, "cpu", runtime=runtime, root=folder)
    if path.exists():
        probe = probe_table(lutlib.LatencyTable.load(path))
        if probe.ok:
            log(f"{path.name}: speed probe {probe.ratio:.2f}x, reused")
            return lutlib.LatencyTable.load(path)
        log(f"{path.name}: speed probe {probe.ratio:.2f}x, built again")
    else:
        log(f"building {path}")
    lutlib.build_table(space, "cpu", out=path, runtime=runtime, resume=False)
    return lutlib.LatencyTable.load(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/runtime_gap.py",
                          *(argv if argv is not None else sys.argv[1:])])
    import torch

    from lut.fingerprint import describe, fingerprint
    from lut.runtimes import EAGER, Runtime
    from nas.bench.runtime_gap import render, runtime_gap
    from supernets.space import get_space

    try:
        space = get_space(args.space)
        folder = Path(args.tables)
        eager = _table(space, EAGER, folder)
        ort_table = _table(space, Runtime.parse("onnxruntime", None, torch.device("cpu")), folder)
        result = runtime_gap(space, eager, ort_table, networks=args.networks, seed=args.seed,
                             rounds=args.rounds, export_check=args.export_check, progress=log)
    except NasError as e:
        print(f"runtime_gap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("runtime_gap: interrupted", file=sys.stderr)
        return 130
    machine = (f"{describe(fingerprint(torch.device('cpu'), 1))}; Python "
               f"{platform.python_version()}")
    tables = {name: f"{t.path} (built in {t.meta.get('build_seconds', 0):.0f} s, "
                    f"calibration {t.calibration.method})"
              for name, t in (("eager", eager), ("onnxruntime", ort_table))}
    result.update(command=command, machine=machine, tables=tables)
    out = Path(args.out)
    write_atomic(out.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    text = render(result, command=command, machine=machine, tables=tables)
    write_atomic(out.with_suffix(".md"), text)
    print(json.dumps(result, default=str) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
