"""posebench_seeds: how far the pose ground truth moves when a network is trained again.

Each posebench network is one training (seed 0, on the machine the table names). This trains
chosen networks of the table again with the table's own recipe and the given seeds (the seed
sets the weights' initialisation, the data order and the augmentation; seed 0 again shows what
the machine alone changes) and reports each network's spread, the within-network standard
deviation pooled over the seeds trained here, how far the table's one training sits from their
mean, and what that means for the percentile a search's pick is scored by: which percentiles one
such deviation spans at each percentile the searches reach.

    python benchmarks/posebench_seeds.py [--networks KEY,...] [--seeds 1,2] \\
        [--workers 1] [--data ../shared/data/lsp] [--posebench results/posebench] \\
        [--workdir runs/posebench_seeds] [--out results/posebench/seeds] [--report-only] [--json]

Resumable like posebench: every finished training is one file (``OUT/networks/<key>-s<seed>.json``);
one in training keeps its checkpoint in ``--workdir``; Ctrl-C stops with a checkpoint and the same
command continues. Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from nas.argtypes import seed_list
from nas.bench import posebench as pb
from nas.bench.search_quality import percentile
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.spec import ArchSpec

REPO = Path(__file__).resolve().parents[1]
PERCENTILES = (80, 85, 89, 95, 98)
DEFAULT_NETWORKS = "random-3,random-8,random-20,random-44,random-45,random-25"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", default=DEFAULT_NETWORKS,
                    help="keys of the ground truth's table to train again (default %(default)s: "
                         "the window's five best by the table and its median network)")
    ap.add_argument("--seeds", default="1,2", help="seeds to train on this machine (default "
                    "%(default)s; 0 is the table's seed, trained here)")
    ap.add_argument("--workers", type=int, default=1,
                    help="trainings at once, one thread each (default %(default)s)")
    ap.add_argument("--data", default=str((REPO / ".." / "shared/data/lsp").resolve()),
                    help="LSP folder (default %(default)s)")
    ap.add_argument("--posebench", default=str(REPO / "results" / "posebench"),
                    help="the ground truth (default %(default)s)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke runs)")
    ap.add_argument("--limit", type=int, help="at most N train and test images (smoke runs)")
    ap.add_argument("--workdir", default="runs/posebench_seeds", help="checkpoints per training")
    ap.add_argument("--out", default="results/posebench/seeds",
                    help="OUT.md, OUT.json and OUT/networks/ (default %(default)s)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; report")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return ap.parse_args(argv)


def load_ground_truth(folder: Path) -> tuple[pb.BenchSettings, dict[str, dict]]:
    """The table's settings and its finished networks of the space (``{key: result}``)."""
    settings = pb.read_settings(folder)
    results = {k: r for k, r in pb.load_results(folder, settings).items()
               if r["status"] == "complete"}
    return settings, results


def window_pcks(ground_truth: Path, settings: pb.BenchSettings) -> list[float]:
    """PCK@0.2 of the window's networks of the space, as search_quality scores picks among."""
    return sorted(float(x) for x in pb.window_rows(pb.load_table(ground_truth), settings)["pck"])


def summarise(trained: dict[str, dict[int, float]], table: dict[str, float | None],
              window: list[float]) -> dict:
    """Each network's PCK by seed trained here; the spread pooled over those only (the table's
    row is left out: networks picked for a high table PCK would carry that selection into the
    spread), the table's PCK minus their mean, and the percentiles one pooled deviation spans at
    the percentiles searches reach."""
    per_network = {}
    squares, dof = 0.0, 0
    for key, by_seed in trained.items():
        fresh = [by_seed[s] for s in sorted(by_seed)]
        mean = statistics.fmean(fresh) if fresh else None
        per_network[key] = {
            "pck": {str(s): by_seed[s] for s in sorted(by_seed)},
            "mean": mean, "range": max(fresh) - min(fresh) if fresh else None,
            "std": statistics.stdev(fresh) if len(fresh) > 1 else None,
            "table": table.get(key),
            "table_minus_mean": (table[key] - mean if table.get(key) is not None and fresh
                                 else None)}
        squares += sum((v - mean) ** 2 for v in fresh)
        dof += max(0, len(fresh) - 1)
    pooled = (squares / dof) ** 0.5 if dof > 0 else None
    shifts = [n["table_minus_mean"] for n in per_network.values()
              if n["table_minus_mean"] is not None]
    levels = {}
    for p in PERCENTILES:
        # the least PCK of the window that scores percentile p, and the percentiles one pooled
        # deviation below and above it span
        at = next((x for x in window if percentile(x, window) >= p), window[-1])
        levels[str(p)] = {"pck": at, "percentile": percentile(at, window)}
        if pooled is not None:
            levels[str(p)].update(low=percentile(at - pooled, window),
                                  high=percentile(at + pooled, window))
    return {"networks": per_network, "pooled_std": pooled, "dof": dof,
            "table_minus_mean": statistics.fmean(shifts) if shifts else None,
            "table_minus_mean_rms": (statistics.fmean(x * x for x in shifts) ** 0.5
                                     if shifts else None),
            "window_networks": len(window), "percentile_pck": levels}


def render(summary: dict, command: str, machine: str) -> str:
    s = summary["stats"]
    fresh = sorted(summary["seeds"])
    lines = ["# The pose ground truth trained again with other seeds", "",
             f"Command: `{command}` ({summary['finished']}).", "",
             f"Machine: {machine}.", "",
             "Each network of `results/posebench` trained again with the table's recipe "
             f"({summary['recipe']}) and seeds {', '.join(map(str, fresh))} on this machine (the "
             "table's row is seed 0 on the machine the table names); the seed sets the "
             "weights' initialisation, the data order and the augmentation. PCK@0.2 on LSP's "
             "test split, single pass.", "",
             "| network | table PCK | " + " | ".join(f"seed {x}" for x in fresh)
             + " | mean of these | range | std | table minus mean |",
             "|---|---|" + "---|" * (len(fresh) + 4)]
    for key, n in s["networks"].items():
        cells = [_f(n["pck"].get(str(x))) for x in fresh]
        lines.append(f"| {key} | {_f(n['table'])} | " + " | ".join(cells)
                     + f" | {_f(n['mean'])} | {_f(n['range'])} | {_f(n['std'])} | "
                     f"{_f(n['table_minus_mean'], '+.2f')} |")
    lines.append("")
    if s["pooled_std"] is None:
        lines.append("No network has two seeds trained here yet: no spread to pool.")
        return "\n".join(lines) + "\n"
    lines += [f"Standard deviation within a network, pooled over the seeds trained here "
              f"(the table's row left out: the networks were chosen by it): "
              f"**{s['pooled_std']:.2f} PCK@0.2** ({s['dof']} degrees of freedom). The table's "
              f"PCK minus the mean of the seeds trained here, over the networks: mean "
              f"{_f(s['table_minus_mean'], '+.2f')}, root mean square "
              f"{_f(s['table_minus_mean_rms'])} (one training on the table's machine against "
              "a mean of several here: what the table's order of these networks rests on).",
              "",
              f"What a search's percentile can resolve ({s['window_networks']} networks in the "
              "window, percentiles as `benchmarks/search_quality.py` computes them): the least "
              "PCK of the window at each percentile a search reaches, and the percentiles a "
              "network one pooled deviation worse or better would score:", "",
              "| percentile | PCK@0.2 | one std worse | one std better |", "|---|---|---|---|"]
    for v in s["percentile_pck"].values():
        lines.append(f"| {v['percentile']:.0f} | {v['pck']:.2f} | {v['low']:.0f} | "
                     f"{v['high']:.0f} |")
    return "\n".join(lines) + "\n"


def _f(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        try:
            seeds = seed_list(args.seeds)
        except argparse.ArgumentTypeError as e:   # one line from main, as every bad input
            raise NasError(f"--seeds {e}") from None
        ground_truth = Path(args.posebench)
        settings, results = load_ground_truth(ground_truth)
        keys = [k.strip() for k in args.networks.split(",") if k.strip()]
        unknown = [k for k in keys if k not in results]
        if not keys or unknown:
            raise NasError(f"--networks: {', '.join(unknown) or 'none given'} not finished "
                           f"networks of {ground_truth}; expected keys such as "
                           f"{', '.join(sorted(results)[:4])}")
        recipe = dict(settings.recipe_settings)
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        out, workdir = Path(args.out), Path(args.workdir)
        base = replace(settings, data=args.data, recipe_settings=recipe,
                       limit=args.limit if args.limit is not None else settings.limit)
        status = "complete"
        data = Path(args.data)
        if not args.report_only and not ((data / "joints.mat").is_file()
                                         and (data / "images").is_dir()):
            raise NasError(f"--data {data}: no LSP folder there (expected joints.mat and "
                           "images/; see ../shared/data/lsp/README.md)")
        if not args.report_only:
            for seed in seeds:
                s = replace(base, seed=seed)
                done = pb.load_results(out, s) if (out / "networks").is_dir() else {}
                todo = [pb.Entry(f"{k}-s{seed}", ArchSpec.from_dict(results[k]["arch"], where=k),
                                 "seed") for k in keys if f"{k}-s{seed}" not in done]
                status = pb.train_all(out, workdir / f"s{seed}", s, todo, workers=args.workers,
                                      log=lambda m: print(f"[posebench_seeds] {m}",
                                                          file=sys.stderr))
                if status == "interrupted":
                    break
        done = pb.load_results(out, base) if (out / "networks").is_dir() else {}
        failed = sorted(k for k, r in done.items() if r["status"] != "complete")
        if failed:
            print(f"posebench_seeds: training failed for {', '.join(failed)} (see their "
                  f"files in {out / 'networks'}); left out of the spread", file=sys.stderr)
        trained = {}
        for k in keys:
            trained[k] = {seed: float(done[f"{k}-s{seed}"]["pck"]) for seed in seeds
                          if done.get(f"{k}-s{seed}", {}).get("status") == "complete"}
        # the table's row is comparable with the recipe's own epochs only
        table = {k: float(results[k]["pck"]) if args.epochs is None else None for k in keys}
        stats = summarise(trained, table, window_pcks(ground_truth, settings))
        machine = next((r["machine"] for r in done.values()), "n/a (nothing trained yet)")
        summary = {"command": "python benchmarks/posebench_seeds.py "
                              + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": status,
                   "recipe": recipe, "seeds": seeds, "stats": stats}
        pb.write_json(out.with_suffix(".json"), summary)
        text = render(summary, summary["command"], machine)
        write_atomic(out.with_suffix(".md"), text)
    except NasError as e:
        print(f"posebench_seeds: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else text, end="" if not args.json else "\n")
    return 0 if status == "complete" else 130


if __name__ == "__main__":
    sys.exit(main())
