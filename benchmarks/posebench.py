"""posebench: the pose ground truth, networks of the proof's space trained with one recipe.

Trains the LSP proof's 8 networks and random networks drawn in the proof's latency window (the
proof's draw continued; see ``nas.bench.posebench``) with ``nas train --recipe posebench``,
measures them side by side, and writes ``results/posebench/``: ``table.parquet``/``table.csv``
(one row per network), ``summary.json`` (with the recipe check: Kendall tau between the short
recipe's PCK and the proof's 30-epoch PCK) and ``README.md``.

    python benchmarks/posebench.py [--workers 2] [--randoms 45] [--max-networks N] \\
        [--data ../shared/data/lsp] [--workdir runs/posebench] [--out results/posebench] [--json]

Resumable: every finished network is one file (``networks/<key>.json``); a network in training
keeps its checkpoint in ``--workdir`` every epoch. Ctrl-C (or SIGTERM) stops every worker at its
next step with a checkpoint; the same command continues. ``--max-networks N`` stops after N more
networks (to spread the work over several sittings). The proof's networks come first, so the
recipe check is the first figure to exist. Latency is measured once no network is in training
(``--no-measure`` skips it); ``--report-only`` trains nothing and rewrites the table and report
from what is finished.

Smoke run (numbers meaningless, checks the plumbing)::

    python benchmarks/posebench.py --epochs 1 --limit 32 --randoms 6 --max-networks 2 \\
        --workdir /tmp/pb/runs --out /tmp/pb/out
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from nas.bench import posebench as pb
from supernets.errors import NasError

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str((REPO / ".." / "shared/data/lsp").resolve()),
                    help="LSP folder (default %(default)s)")
    ap.add_argument("--randoms", type=int, default=45,
                    help="random networks kept from the draw, the proof's 5 included (default "
                         "%(default)s: 40 new); more extends a table, never changes its rows")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (a new table)")
    ap.add_argument("--workers", type=int, default=1,
                    help="networks trained at once, one thread each (default %(default)s)")
    ap.add_argument("--max-networks", type=int, help="stop after N more networks")
    ap.add_argument("--only", help="comma-separated keys to train (e.g. the proof's: "
                    "mobilenetv2,searched,...); default: all, the proof's first")
    ap.add_argument("--limit", type=int, help="at most N train and test images (smoke runs)")
    ap.add_argument("--workdir", default="runs/posebench", help="checkpoints per network")
    ap.add_argument("--out", default="results/posebench", help="the table and its report")
    ap.add_argument("--no-measure", action="store_true", help="skip the latency measurement")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: measure the finished networks side by side (unless "
                         "--no-measure) and write the table and report")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)
    for name in ("randoms", "epochs", "workers", "max_networks", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    return args


def log(message: str) -> None:
    print(f"[posebench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    given = list(argv if argv is not None else sys.argv[1:])
    command = shlex.join(["python", "benchmarks/posebench.py", *given])
    # what reproduces the table: this command without the flags that only pace or narrow a run
    reproduce = shlex.join(["python", "benchmarks/posebench.py", *_without(
        given, flags=("--report-only", "--no-measure", "--json"),
        valued=("--max-networks", "--only"))])
    out, workdir = Path(args.out), Path(args.workdir)
    try:
        settings = pb.proof_settings(args.data, randoms=args.randoms, epochs=args.epochs,
                                     limit=args.limit)
        if settings.limit and out.resolve() == (REPO / "results" / "posebench").resolve():
            raise NasError(f"--limit {settings.limit}: a smoke run cannot write the committed "
                           f"table; give --out")
        pb.pin(out, settings)
        entries, how = pb.entries(settings)
        results = pb.load_results(out, settings)
        keys = {e.key for e in entries}
        only = set(args.only.split(",")) if args.only else None
        if only and only - keys:
            raise NasError(f"--only: {', '.join(sorted(only - keys))} not in the table "
                           f"(keys: {', '.join(e.key for e in entries[:10])}, ...)")
        todo = [e for e in entries if e.key not in results and (not only or e.key in only)]
        if args.max_networks:
            todo = todo[:args.max_networks]
        if args.report_only:
            todo = []
        log(f"{len(results)} of {len(entries)} networks done; training {len(todo)} with "
            f"{args.workers} worker(s), recipe {settings.recipe} {settings.recipe_settings}")
        status = pb.train_all(out, workdir, settings, todo, workers=args.workers, log=log)
        results = pb.load_results(out, settings)
        latency = None
        if status == "complete" and not args.no_measure:
            done = {e.key: e.spec for e in entries
                    if results.get(e.key, {}).get("status") == "complete"}
            if "mobilenetv2" in done:
                latency = pb.measure(out, done, log=log)
        elif (out / "latency.json").exists():
            latency = pb.read_json(out / "latency.json", "the side-by-side latency")
        invocation = {"started": started, "command": command, "status": status,
                      "seconds": time.perf_counter() - t0,
                      "trained": sum(1 for e in todo if e.key in results),
                      "workers": args.workers, "machine": _machine()}
        summary = pb.report(out, settings, entries, how, results, latency, command=reproduce,
                            invocation=None if args.report_only and args.no_measure
                            else invocation)
    except NasError as e:
        print(f"posebench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log("aborted; finished networks are kept, run the same command to continue")
        return 130
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        rc = summary["recipe_check"]
        print(f"{summary['complete']} of {summary['networks']} networks trained; recipe check "
              f"on {rc['n']} proof networks: Kendall tau {rc['kendall_tau']:.3f}, Spearman "
              f"{rc['spearman']:.3f}; report {out / 'README.md'}")
    return 130 if status == "interrupted" else 0


def _without(argv: list[str], *, flags: tuple[str, ...], valued: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags or any(a.startswith(v + "=") for v in valued):
            continue
        elif a in valued:
            skip = True
        else:
            out.append(a)
    return out


def _machine() -> str:
    import torch

    from lut.fingerprint import describe, fingerprint

    return describe(fingerprint(torch.device("cpu"), 1))


if __name__ == "__main__":
    sys.exit(main())
