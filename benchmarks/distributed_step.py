"""Search-step throughput with several processes (``torchrun -m nas search``) against one.

The same short search (``--space``, ``--input``, per-rank ``--batch-size``, ``--threads`` per
process) is run by 1 and by N processes on this machine, alternating, ``--rounds`` times; each
run's throughput is training samples per second over its search epochs (weight step and
architecture step, warm-up excluded: ``log.jsonl``'s ``seconds`` of the search phase), i.e.
processes x per-rank batch x steps per epoch / seconds. The report gives each count's median
and the ratio of medians measured in this one run (issue target: 2 processes >= 1.6x one, at the
same per-rank batch, 1 thread each).

    python benchmarks/distributed_step.py [--processes 1,2] [--rounds 3] [--space cpu-small] \\
        [--input 64x64] [--batch-size 16] [--train-samples 512] [--threads 1] [--json]

Writes ``results/benchmarks/distributed_step.json`` and ``.md`` (``--out``). The latency table
(built once into ``--workdir`` for the space at the input) only steers the search; its probe is
not checked (``--allow-foreign-lut``), since the machine is busy by design while N processes run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nas.argtypes import input_size  # noqa: E402
from supernets.errors import NasError  # noqa: E402
from supernets.fileio import write_atomic  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="1,2", help="process counts, e.g. 1,2 (default)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per count (default 3)")
    ap.add_argument("--space", default="cpu-small")
    ap.add_argument("--input", type=input_size, default=(64, 64), metavar="HxW")
    ap.add_argument("--batch-size", type=int, default=16, help="per rank (default 16)")
    ap.add_argument("--train-samples", type=int, default=512,
                    help="synthetic training images (default 512)")
    ap.add_argument("--epochs", type=int, default=3, help="search epochs, 1 of warm-up")
    ap.add_argument("--threads", type=int, default=1, help="per process (default 1)")
    ap.add_argument("--workdir", default="runs/distributed_step")
    ap.add_argument("--out", default="results/benchmarks/distributed_step.md")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        args.process_counts = sorted({int(p) for p in args.processes.split(",")})
    except ValueError:
        ap.error(f"--processes {args.processes}: expected counts such as 1,2")
    if min(args.process_counts) < 1 or args.rounds < 1 or args.epochs < 2:
        ap.error("--processes, --rounds: positive; --epochs: 2 or more")
    return args


def table(args, workdir: Path) -> Path:
    """This machine's table of the space at the input, built once into the workdir."""
    import lut as lutlib
    from supernets.space import get_space

    space = get_space(args.space, input_size=args.input)
    path = workdir / f"{space.name}-{args.input[0]}x{args.input[1]}.parquet"
    if not path.exists():
        lutlib.build_table(space, "cpu", out=path, progress=False)
    return path


def one_run(args, lut: Path, processes: int, out: Path) -> dict:
    h, w = args.input
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(processes), "-m", "nas", "search", "--space", args.space,
           "--input", f"{h}x{w}", "--budget", "1000ms", "--epochs", str(args.epochs),
           "--warmup-epochs", "1", "--train-samples", str(args.train_samples), "--batch-size",
           str(args.batch_size), "--threads", str(args.threads), "--rank-samples", "0",
           "--lut", str(lut), "--allow-foreign-lut", "--out", str(out), "--force",
           "--no-progress", "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise NasError(f"{processes}-process search failed (exit {done.returncode}): "
                       f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    report = json.loads(done.stdout)
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    search = [e for e in history if e["phase"] == "search"]
    seconds = sum(e["seconds"] for e in search)
    n_train = round(args.train_samples * (1 - report["config"]["arch_split"]))
    steps = max(1, -(-n_train // processes) // args.batch_size)
    samples = processes * args.batch_size * steps * len(search)
    return {"processes": processes, "seconds": seconds, "samples": samples,
            "steps_per_epoch": steps, "samples_per_s": samples / seconds,
            "step_ms": 1e3 * seconds / (steps * len(search)),
            "wall_s": time.perf_counter() - t0}


def run(args) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lut = table(args, workdir)
    runs = []
    for r in range(args.rounds):
        for p in args.process_counts:   # alternating: drift hits every count alike
            runs.append({"round": r, **one_run(args, lut, p, workdir / f"p{p}")})
            print(f"round {r + 1}: {p} process(es): {runs[-1]['samples_per_s']:.1f} samples/s",
                  file=sys.stderr)
    medians = {p: float(np.median([x["samples_per_s"] for x in runs if x["processes"] == p]))
               for p in args.process_counts}
    base = medians[args.process_counts[0]]
    return {"command": shlex.join(["python", *sys.argv]),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "settings": {k: getattr(args, k) for k in ("space", "input", "batch_size",
                                                        "train_samples", "epochs", "threads",
                                                        "rounds")},
            "runs": runs,
            "median_samples_per_s": {str(p): m for p, m in medians.items()},
            "speedup": {str(p): m / base for p, m in medians.items()},
            "target": "2 processes >= 1.6x one at the same per-rank batch"}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["# Search-step throughput: N processes (torchrun, gloo) against one", "",
             f"Command: `{result['command']}`", "",
             f"{s['space']} at {s['input'][0]}x{s['input'][1]}, per-rank batch "
             f"{s['batch_size']}, {s['threads']} thread(s) per process, {s['epochs']} search "
             f"epochs (1 warm-up, not counted), {s['rounds']} alternating rounds; throughput = "
             "training samples per second over the search epochs (weight and architecture "
             "steps).", "",
             "| processes | median samples/s | speedup | runs (samples/s) |", "|---|---|---|---|"]
    for p, m in result["median_samples_per_s"].items():
        each = ", ".join(f"{x['samples_per_s']:.1f}" for x in result["runs"]
                         if str(x["processes"]) == p)
        lines.append(f"| {p} | {m:.1f} | {result['speedup'][p]:.2f}x | {each} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except NasError as e:
        print(f"distributed_step: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_atomic(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_atomic(out, markdown(result))
    print(json.dumps(result) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
