"""A search scored on the ground truth: where its pick ranks among the posebench networks.

For each strategy and seed, ``nas search`` runs at the posebench setting (the proof's space at
LSP's preset, the proof's latency table, budget = mobilenetv2's latency as the proof measured
it, so the search's window [0.87, 0.97] x budget lies inside the table's [0.85, 1.0]). Its pick
is looked up among the table's networks by its choices; one that is not there is trained with
the table's own recipe (``nas.bench.posebench.train_all``), so every pick has a PCK@0.2 on LSP's
test split measured exactly as the table's networks were. The figure is the pick's percentile
among the table's networks inside the window (ties count half), with the search's wall time and
the proxy evaluations it used.

Searches run in ``workdir/<strategy>-s<seed>`` and resume there; picks train in
``workdir/train/<key>`` with checkpoints; results of picks are files under ``out/networks/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nas.bench import posebench as pb
from nas.search.blackbox import choices_key
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.spec import ArchSpec

__all__ = ["VARIANTS", "QualitySettings", "percentile", "run_searches", "score"]

# what each name in --strategies runs: a strategy of ``nas search`` and its settings
VARIANTS = {
    "differentiable": {"strategy": "differentiable"},          # the default as it stands
    # the default before: path mode, lambda by the argmax network; ranked among 32 draws (the
    # LSP proof's search, results/benchmarks/pose_proof_runs/search, is its seed 0)
    "path-rank": {"strategy": "differentiable", "mode": "path", "lam_control": "argmax",
                  "arch_lr": 0.01, "rank_samples": 32, "rank_draw": "fit", "epochs": 40},
    "reinforce": {"strategy": "differentiable", "mode": "reinforce", "lam_control": "expected",
                  "arch_lr": 0.05, "rank_samples": 0, "epochs": 40},
    # the same search, its pick then chosen among 48 draws from the learned probabilities by
    # the supernet's held-out loss (nas.search.rank), the proxy results/posebench found best
    "reinforce-rank": {"strategy": "differentiable", "mode": "reinforce",
                       "lam_control": "expected", "arch_lr": 0.05, "rank_samples": 48,
                       "rank_draw": "fit", "epochs": 40},
    # the same at 10 epochs (5 of warm-up), the default since: a supernet trained 5 to 10
    # epochs ranks the ground truth best (results/posebench/proxies.md: tau 0.665), the
    # 40-epoch one of these searches at tau 0.36
    "reinforce-rank-e10": {"strategy": "differentiable", "mode": "reinforce",
                           "lam_control": "expected", "arch_lr": 0.05, "rank_samples": 48,
                           "rank_draw": "fit", "epochs": 10},
    # the same search, its 48 candidates drawn from the learned probabilities among the
    # window's networks (nas.search.rank, draw "window") instead of fitted into it
    "reinforce-window-e10": {"strategy": "differentiable", "mode": "reinforce",
                             "lam_control": "expected", "arch_lr": 0.05, "rank_samples": 48,
                             "rank_draw": "window", "epochs": 10},
    # the same trained searches ranked again, their 48 candidates chosen by evolution (a
    # quarter drawn as "window", the rest mutations of the best scored so far; RERANKS)
    "reinforce-evolve-e10": {"strategy": "differentiable", "mode": "reinforce",
                             "lam_control": "expected", "arch_lr": 0.05, "rank_samples": 48,
                             "rank_draw": "evolve", "epochs": 10},
    "optuna": {"strategy": "optuna"},
    # TPE with the default's proxy evaluations (20 window draws, then 28 modelled)
    "optuna-48": {"strategy": "optuna", "trials": 48},
    "random": {"strategy": "random"},
    # random search with the default's proxy evaluations (its ranking scores 48 networks)
    "random-48": {"strategy": "random", "trials": 48},
}

# variants that rank a finished search of another again instead of training their own: the
# supernet and probabilities are the other's (same seed), only the ranking differs, so the two
# compare paired; the search's cost is the other's training plus its own ranking
RERANKS = {"reinforce-evolve-e10": "reinforce-window-e10"}


@dataclass
class QualitySettings:
    strategies: tuple[str, ...] = ("differentiable", "reinforce", "optuna", "random")
    seeds: tuple[int, ...] = (0, 1, 2)
    trials: int = 300                    # proxy evaluations of optuna and random
    supernet: str | None = None          # optuna/random: a trained supernet (snapshot)
    search_epochs: int = 10              # differentiable: nas search's default
    differentiable: dict = field(default_factory=dict)  # SearchConfig overrides
    threads: int = 1

    def __post_init__(self):
        self.strategies = tuple(self.strategies)
        self.seeds = tuple(int(s) for s in self.seeds)

    def to_dict(self) -> dict:
        return asdict(self)


def search_config(q: QualitySettings, bench: pb.BenchSettings, strategy: str, seed: int):
    from nas.search.searcher import SearchConfig
    from supernets.space import get_space

    if strategy not in VARIANTS:
        raise NasError(f"--strategies: {strategy!r} is not one of {', '.join(VARIANTS)}")
    space = get_space(bench.space, preset=bench.preset)
    variant = dict(VARIANTS[strategy])
    common = {"budget_ms": bench.budget_ms, "space": bench.space,
              "input_size": tuple(space.skeleton.input_size),
              "num_joints": space.skeleton.num_joints, "data": bench.data, "seed": seed,
              "threads": q.threads, **variant}
    if variant["strategy"] == "differentiable":
        common.setdefault("epochs", q.search_epochs)    # a variant's own epochs first
        return SearchConfig(**common, **q.differentiable)
    if not q.supernet:
        raise NasError(f"--strategy {strategy}: give the trained supernet to search over "
                       "(--supernet, e.g. runs/proxies/uniform/supernet-e20.pt)")
    common.setdefault("trials", q.trials)               # a variant's own evaluations first
    return SearchConfig(**common, supernet=q.supernet)


def run_searches(q: QualitySettings, bench: pb.BenchSettings, workdir: Path, *,
                 log=print, progress: bool = False, finished_only: bool = False
                 ) -> dict[str, dict]:
    """Every (strategy, seed) search, resumed where it stopped: ``{key: report}``; a search
    interrupted (Ctrl-C) stops the whole run (``KeyboardInterrupt``). ``finished_only``: read
    back the searches that have finished, run none."""
    from nas.search.run import search
    from nas.search.run_blackbox import STATE_FILE

    table = pb.REPO / bench.table if not Path(bench.table).is_absolute() else Path(bench.table)

    def run_one(strategy: str, seed: int) -> dict | None:
        key = f"{strategy}-s{seed}"
        out = workdir / key
        done = out / "report.json"
        if done.is_file():
            return json.loads(done.read_text())
        if finished_only:
            return None
        resume = (out / STATE_FILE).is_file() or (out / "checkpoint.pt").is_file()
        cfg = None if resume else search_config(q, bench, strategy, seed)
        if strategy in RERANKS and not resume:
            base = RERANKS[strategy]
            run_one(base, seed)   # its trained search first (read back when finished)
            rerank_from(workdir / f"{base}-s{seed}", out, cfg)
            resume = True
            log(f"ranking {base}-s{seed}'s trained search again as {key} in {out}")
        else:
            log(f"{'continuing' if resume else 'running'} search {key} in {out}")
        t0 = time.perf_counter()
        report = search(None if resume else cfg, out, lut=str(table), allow_foreign_lut=True,
                        progress=progress, resume=resume)
        if report.get("status") == "interrupted":
            raise KeyboardInterrupt
        report["wall_seconds_this_run"] = time.perf_counter() - t0
        write_atomic(done, json.dumps(report, indent=2, default=str) + "\n")
        return report

    reports = {}
    for strategy in q.strategies:
        for seed in q.seeds:
            report = run_one(strategy, seed)
            if report is not None:
                reports[f"{strategy}-s{seed}"] = report
    return reports


def rerank_from(base: Path, out: Path, cfg) -> None:
    """Copy the finished differentiable search in ``base`` to ``out`` with ``cfg``'s ranking
    settings, so that resuming it there ranks its trained supernet again (``RERANKS``)."""
    import shutil

    import torch

    from nas.search.searcher import load_checkpoint

    state = load_checkpoint(base / "checkpoint.pt")
    mine = dataclasses.asdict(cfg)
    # a setting left None is resolved by the search (e.g. runtime from the table): not compared
    differs = [k for k in mine if not k.startswith("rank") and k in state["config"]
               and mine[k] is not None and mine[k] != state["config"][k]
               and not (isinstance(mine[k], tuple) and list(mine[k]) == state["config"][k])]
    if differs:
        raise NasError(f"{base}: that search's settings differ from the ranking variant's in "
                       f"{', '.join(differs)}; only rank_* may differ")
    for k in mine:
        if k.startswith("rank"):
            state["config"][k] = mine[k]
    out.mkdir(parents=True, exist_ok=True)
    if (base / "log.jsonl").is_file():        # the epochs' log: the search's time counts it
        shutil.copy2(base / "log.jsonl", out / "log.jsonl")
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(out / "checkpoint.pt", buf.getvalue())


def pick_key(key: str, spec: ArchSpec) -> str:
    """The name a search's pick trains under: its search and its choices (a search run again
    that picks another network does not take the earlier pick's result)."""
    digest = hashlib.sha1(choices_key(spec.choices).encode()).hexdigest()[:8]
    return f"pick-{key}-{digest}"


def percentile(value: float, population: list[float]) -> float:
    """Share of ``population`` below ``value`` (ties count half), in percent."""
    pop = np.asarray(population, dtype=float)
    return float(100.0 * ((pop < value).sum() + 0.5 * (pop == value).sum()) / len(pop))


def supernet_fidelity(folder: Path, bench: pb.BenchSettings, inside, cache: Path,
                      log=print, compute: bool = True) -> dict | None:
    """How well a finished differentiable search's own supernet ranks the ground truth: every
    table network of the window scored as ``results/posebench/proxies.md`` scores them
    (``nas.search.oneshot.PathScorer``: BatchNorm recomputed per path, heatmap loss on 200
    held-out training images of the search's architecture split), Kendall tau of -loss against
    PCK@0.2, and the ground-truth percentile of the network it scores best. Cached in the
    folder ``cache`` by the hash of the supernet's weights; None when the search left no
    checkpoint or, unless ``compute``, when it is not in the cache."""
    import hashlib

    from scipy.stats import kendalltau

    from nas.search.oneshot import PathScorer
    from nas.search.searcher import load_checkpoint

    ckpt = folder / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    state = load_checkpoint(ckpt)
    digest = hashlib.sha1()       # by the weights: a search ranked again from a copy shares it
    for name, tensor in sorted(state["supernet"].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    cache = cache / f"{digest.hexdigest()[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if not compute:
        return None
    log(f"scoring the {len(inside)} networks of the window with {ckpt}'s supernet")
    scorer = PathScorer.from_search(state, preset=bench.preset)
    losses = {k: scorer.score(ArchSpec.from_dict(json.loads(a)))["loss"]
              for k, a in zip(inside["key"], inside["arch"], strict=True)}
    pck = dict(zip(inside["key"], inside["pck"], strict=True))
    keys = list(losses)
    best = min(keys, key=losses.get)
    result = {"checkpoint": str(ckpt), "epochs": state["config"]["epochs"], "losses": losses,
              "kendall_tau": float(kendalltau([-losses[k] for k in keys],
                                              [pck[k] for k in keys])[0]),
              "best": best, "best_percentile": percentile(pck[best], list(pck.values()))}
    write_atomic(cache, json.dumps(result, indent=2) + "\n")
    return result


def score(q: QualitySettings, bench: pb.BenchSettings, reports: dict[str, dict], out: Path,
          workdir: Path, *, workers: int = 1, log=print, fidelity: bool = False) -> dict:
    """Every pick's ground-truth PCK (looked up, else trained with the table's recipe) and its
    percentile among the table's networks of the window; the summary by strategy."""
    low, high = bench.window_ms
    inside = pb.window_rows(pb.load_table(pb.REPO / "results" / "posebench"), bench)
    by_choices = {choices_key(json.loads(a)["choices"]): (k, p)
                  for k, a, p in zip(inside["key"], inside["arch"], inside["pck"], strict=True)}
    # picks trained before, by their choices: a pick is trained once whichever search chose it
    results = pb.load_results(out, bench)
    trained = {choices_key(r["arch"]["choices"]): k for k, r in results.items()}
    picks, todo = {}, []
    for key, r in reports.items():
        spec = ArchSpec.from_dict(r["arch"], where=f"{key}/report.json")
        choices = choices_key(spec.choices)
        found = by_choices.get(choices)
        picks[key] = {"spec": spec, "in_table": found[0] if found else None,
                      "pck": found[1] if found else None,
                      "trained": None if found else trained.get(choices, pick_key(key, spec))}
        if not found and choices not in trained and all(e.key != picks[key]["trained"]
                                                        for e in todo):
            todo.append(pb.Entry(picks[key]["trained"], spec, "pick",
                                 predicted_ms=r.get("predicted_ms")))
    if todo:
        log(f"training {len(todo)} pick(s) with the table's recipe")
        status = pb.train_all(out, workdir / "train", bench, todo, workers=workers, log=log)
        if status == "interrupted":
            raise KeyboardInterrupt
        results = pb.load_results(out, bench)
    population = inside["pck"].tolist()
    rows = []
    for key, p in picks.items():
        r = reports[key]
        strategy, seed = key.rsplit("-s", 1)
        trained = results.get(p["trained"]) if p["trained"] else None
        pck = p["pck"] if p["in_table"] else (trained or {}).get("pck")
        search = r.get("search") or {}
        rows.append({
            "key": key, "strategy": strategy, "seed": int(seed),
            "predicted_ms": r.get("predicted_ms"), "in_table": p["in_table"],
            "trained": p["trained"],
            "pck": pck, "percentile": percentile(pck, population) if pck is not None else None,
            "proxy_loss": (r.get("proxy") or {}).get("loss", r.get("proxy_loss")),
            "evaluations": search.get("evaluations", (r.get("config") or {}).get("rank_samples")),
            "search_seconds": _search_seconds(r, workdir / key),
            "supernet": supernet_fidelity(workdir / key, bench, inside, out / "fidelity",
                                          log=log, compute=fidelity)
            if strategy not in ("optuna", "random") else None,
            "choices": dict(p["spec"].choices)})
    summary = summarize(rows, q.strategies)
    missing = [f"{st}-s{seed}" for st in q.strategies for seed in q.seeds
               if f"{st}-s{seed}" not in reports]
    return {"window_ms": [low, high], "population": len(population), "not_run": missing,
            "population_pck": {"min": min(population), "median": float(np.median(population)),
                               "max": max(population)},
            "rows": rows, "summary": summary}


def summarize(rows: list[dict], strategies) -> dict:
    """Per strategy (in ``strategies``' order): seeds scored, mean percentile, PCK and time."""
    summary = {}
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy and r["percentile"] is not None]
        if mine:
            summary[strategy] = {
                "seeds": len(mine),
                "mean_percentile": float(np.mean([r["percentile"] for r in mine])),
                "mean_pck": float(np.mean([r["pck"] for r in mine])),
                "mean_search_seconds": float(np.mean([r["search_seconds"] or 0 for r in mine])),
                "evaluations": [r["evaluations"] for r in mine]}
    return summary


def add_earlier(result: dict, earlier: dict, where: str, machine: str | None = None
                ) -> list[str]:
    """Carry the rows of an ``earlier`` report (its JSON) whose searches this one did not run
    (their folders gone, or run on another machine), each marked with the earlier machine;
    rows of searches this one ran again go to ``result["replaced"]`` (with the earlier report's
    own replaced rows), unless they ran on ``machine``, this one's (the same search read
    back). The window must be the same. Returns the strategies, this report's first."""
    if [round(x, 6) for x in earlier.get("window_ms", [])] != [round(x, 6)
                                                               for x in result["window_ms"]]:
        raise NasError(f"--earlier {where}: its window {earlier.get('window_ms')} ms is not "
                       f"this report's {result['window_ms']}")
    mine = {r["key"] for r in result["rows"]}
    result["replaced"] = []

    def replaced(row: dict) -> None:
        if row["machine"] != machine and all((x["key"], x["machine"]) != (row["key"],
                                                                          row["machine"])
                                             for x in result["replaced"]):
            result["replaced"].append(row)

    for r in earlier.get("rows", []):
        row = {**r, "machine": r.get("machine") or earlier.get("machine"), "earlier": True}
        if r["key"] in mine:
            replaced(row)
        else:
            result["rows"].append(row)
    for r in earlier.get("replaced", []):
        replaced(r)
    strategies = list(dict.fromkeys([*result["summary"], *(r["strategy"]
                                                           for r in result["rows"])]))
    strategies = [s for s in VARIANTS if s in strategies] + [s for s in strategies
                                                             if s not in VARIANTS]
    result["rows"].sort(key=lambda r: (strategies.index(r["strategy"]), r["seed"]))
    result["summary"] = summarize(result["rows"], strategies)
    result["not_run"] = [k for k in result.get("not_run", [])
                         if k not in {r["key"] for r in result["rows"]}]
    return strategies


def _search_seconds(r: dict, folder: Path) -> float | None:
    """Search time: the supernet's training and the study (optuna, random), or the epochs of
    the log and the ranking (differentiable; a search continued in several runs counts once)."""
    s = r.get("search")
    if s:
        return float(s.get("study_seconds", 0.0)) + float(s["supernet"].get("train_seconds", 0.0))
    if (folder / "log.jsonl").is_file():
        from nas.bench.proof import search_seconds

        return search_seconds(folder, r)
    return r.get("wall_seconds_this_run")


def variant_text(name: str) -> str:
    """A variant's settings, and whether they are the differentiable search's defaults."""
    from nas.search.searcher import SearchConfig, default_arch_lr

    variant = VARIANTS[name]
    settings = ", ".join(f"{k}={v}" for k, v in variant.items() if k != "strategy")
    text = f"strategy {variant['strategy']}" + (f", {settings}" if settings else "")
    if variant["strategy"] == "differentiable":
        defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
        defaults["arch_lr"] = default_arch_lr(defaults["mode"])
        if all(defaults[k] == v for k, v in variant.items() if k != "epochs"):
            epochs = variant.get("epochs", defaults["epochs"])
            text += (" (nas search's default)" if epochs == defaults["epochs"]
                     else f" (the default's settings at {epochs} epochs)")
    return text


def render(result: dict, q: QualitySettings, *, command: str, machine: str) -> str:
    lo, hi = result["window_ms"]
    pop = result["population_pck"]
    lines = ["# Search quality on the pose ground truth", "",
             f"Command: `{command}`", "", f"Machine: {machine}", "",
             f"Each pick's PCK@0.2 (LSP test split, the table's 12-epoch recipe) and its "
             f"percentile among the {result['population']} posebench networks predicted in "
             f"{lo:.3f} - {hi:.3f} ms by the proof's table (PCK {pop['min']:.2f} - "
             f"{pop['max']:.2f}, median {pop['median']:.2f}). Optuna and random search run over "
             f"the supernet {q.supernet} with {q.trials} proxy evaluations each; the "
             f"differentiable search trains its own ({q.search_epochs} epochs).", "",
             "| strategy | seed | pick | predicted ms | PCK@0.2 | percentile | proxy evals | "
             "search s | own supernet: tau, best's percentile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        pick = r["in_table"] or f"{r.get('trained') or 'pick-' + r['key']} (trained)"
        own = r.get("supernet")
        mark = "*" if r.get("earlier") else ""
        lines.append(f"| {r['strategy']}{mark} | {r['seed']} | {pick} | {r['predicted_ms']:.3f} | "
                     + (f"{r['pck']:.2f} | {r['percentile']:.0f} |" if r["pck"] is not None
                        else "- | - |")
                     + f" {r['evaluations'] if r['evaluations'] is not None else '-'} | "
                     + (f"{r['search_seconds']:.0f} |" if r["search_seconds"] else "- |")
                     + (f" {own['kendall_tau']:.3f}, {own['best_percentile']:.0f} |" if own
                        else " - |"))
    if any(r.get("supernet") for r in result["rows"]):
        lines += ["", "Own supernet: every network of the window scored by the search's final "
                  "supernet as results/posebench/proxies.md scores them (BatchNorm recomputed "
                  "per path, heatmap loss on 200 held-out images of the search's architecture "
                  "split); Kendall tau against PCK@0.2, and the percentile of the network it "
                  "scores best. The 5-epoch uniform supernet scores 0.665 there."]
    earlier = sorted({r["machine"] for r in result["rows"] if r.get("earlier")})
    if earlier:
        lines += ["", "\\* carried from the earlier report (`--earlier`): searched and timed on "
                  + "; ".join(earlier) + "; its search folders are not kept here."]
    if result.get("replaced"):
        lines += ["", "The earlier report's runs of searches run again here (on "
                  + "; ".join(sorted({r["machine"] for r in result["replaced"]}))
                  + "), replaced above (run again on another machine, a search may pick "
                  "another network):", "",
                  "| strategy | seed | PCK@0.2 | percentile |", "|---|---|---|---|"]
        lines += [f"| {r['strategy']} | {r['seed']} | "
                  + (f"{r['pck']:.2f} | {r['percentile']:.0f} |" if r["pck"] is not None
                     else "- | - |") for r in result["replaced"]]
    if result.get("not_run"):
        lines += ["", f"Not run yet: {', '.join(result['not_run'])}."]
    lines += ["", "Strategies (`nas search` settings; the search's own defaults otherwise):", ""]
    lines += [f"- {name}: {variant_text(name)}" + (f" (ranks {RERANKS[name]}'s searches again)"
                                                   if name in RERANKS else "")
              for name in result.get("strategies") or q.strategies]
    lines += ["", "| strategy | seeds | mean percentile | mean PCK@0.2 | target |",
              "|---|---|---|---|---|"]
    for strategy, s in result["summary"].items():
        lines.append(f"| {strategy} | {s['seeds']} | {s['mean_percentile']:.1f} | "
                     f"{s['mean_pck']:.2f} | >= 80th"
                     + (" and above random" if not strategy.startswith("random") else "")
                     + " |")
    return "\n".join(lines) + "\n"
