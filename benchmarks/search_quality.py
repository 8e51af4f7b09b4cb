"""search_quality: each strategy's pick scored on the pose ground truth (results/posebench).

Runs ``nas search`` for every strategy and seed at the posebench setting (the proof's space,
table and budget), looks each pick up in the ground truth or trains it with the table's recipe,
and writes its PCK@0.2 percentile among the table's networks of the window, wall time and proxy
evaluations to ``results/benchmarks/search_quality.md`` (and ``.json``). See
``nas.bench.search_quality``.

    python benchmarks/search_quality.py [--strategies differentiable,optuna,random] \\
        [--seeds 0,1,2] [--trials 300] [--supernet runs/proxies/uniform/supernet-e20.pt] \\
        [--workers 2] [--workdir runs/search_quality] [--finished-only] [--fidelity] \\
        [--earlier results/benchmarks/search_quality.json] [--json]

Resumable: searches resume in their folders, finished ones are read back, picks train with
per-epoch checkpoints (Ctrl-C stops; the same command continues).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from nas.argtypes import seed_list
from nas.bench import posebench as pb
from nas.bench import search_quality as sq
from supernets.errors import NasError
from supernets.fileio import write_atomic

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default=",".join(sq.VARIANTS),
                    help="what to run, of: " + ", ".join(f"{k} {v}" for k, v in
                                                         sq.VARIANTS.items()))
    ap.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=300, help="proxy evaluations (optuna, random)")
    ap.add_argument("--supernet", default="runs/proxies/uniform/supernet-e20.pt",
                    help="supernet for optuna and random (default: proxy_fidelity's uniform "
                         "supernet at 20 epochs)")
    ap.add_argument("--search-epochs", type=int, default=10,
                    help="differentiable search epochs of a variant that names none (default "
                         "10, nas search's)")
    ap.add_argument("--workers", type=int, default=1, help="picks trained at once")
    ap.add_argument("--posebench", default="results/posebench", help="the ground truth")
    ap.add_argument("--workdir", default="runs/search_quality")
    ap.add_argument("--out", default="results/benchmarks/search_quality",
                    help="OUT.md and OUT.json, the picks' results in OUT/networks (a given .md "
                         "or .json suffix is taken off; default %(default)s)")
    ap.add_argument("--earlier", metavar="JSON",
                    help="an earlier report's JSON (e.g. the committed one): its rows for "
                         "searches this run does not have are carried over, marked with the "
                         "machine they ran on")
    ap.add_argument("--finished-only", action="store_true",
                    help="report the searches that have finished (their picks trained if "
                         "needed), start none")
    ap.add_argument("--fidelity", action="store_true",
                    help="also score the window's networks with each differentiable search's "
                         "own supernet (Kendall tau; about 5 min a search; cached, and cached "
                         "figures are reported without this flag too)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",")]
    bad = [s for s in args.strategies if s not in sq.VARIANTS]
    if bad:
        ap.error(f"--strategies: {bad[0]!r} is not one of {', '.join(sq.VARIANTS)}")
    for name in ("trials", "search_epochs", "workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected a positive integer")
    return args


def log(message: str) -> None:
    print(f"[search_quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def _machine() -> str:
    import torch

    from lut.fingerprint import describe, fingerprint

    return (f"{describe(fingerprint(torch.device('cpu'), 1))}; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/search_quality.py",
                          *(argv if argv is not None else sys.argv[1:])])
    try:
        bench = pb.read_settings(Path(args.posebench))
        q = sq.QualitySettings(strategies=args.strategies, seeds=args.seeds, trials=args.trials,
                               supernet=args.supernet, search_epochs=args.search_epochs)
        workdir, out = Path(args.workdir), Path(args.out)
        if out.suffix in (".md", ".json"):
            out = out.with_suffix("")
        for path in (out.with_suffix(".md"), out.with_suffix(".json")):
            if path.is_dir():
                raise NasError(f"--out {args.out}: {path} is a directory; expected the report's "
                               "path without suffix")
        earlier = None
        if args.earlier:
            earlier = pb.read_json(Path(args.earlier), "an earlier search_quality report")
        reports = sq.run_searches(q, bench, workdir, log=log, finished_only=args.finished_only)
        if not reports:
            raise NasError(f"no finished search in {workdir} among "
                           f"{', '.join(q.strategies)} x seeds {q.seeds}")
        result = sq.score(q, bench, reports, out, workdir, workers=args.workers, log=log,
                          fidelity=args.fidelity)
        result["strategies"] = list(q.strategies)
        machine = _machine()
        if earlier is not None:
            result["strategies"] = sq.add_earlier(result, earlier, args.earlier, machine)
    except NasError as e:
        print(f"search_quality: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("search_quality: interrupted; the same command continues", file=sys.stderr)
        return 130
    result.update(command=command, settings=q.to_dict(), machine=machine)
    for row in result["rows"]:
        row.setdefault("machine", machine)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    write_atomic(out.with_suffix(".md"), sq.render(result, q, command=command, machine=machine))
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(sq.render(result, q, command=command, machine=machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
