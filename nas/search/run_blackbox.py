"""One search by a strategy that proposes networks (``--strategy optuna|random``), end to end.

Files in the run directory, beside the differentiable search's ``arch.json``/``report.json``:

* ``strategy.json``: the search's config and table (what ``--resume`` continues);
* ``supernet/``: the supernet's training checkpoint and log (``nas.search.oneshot``), unless
  ``--supernet`` named one trained before;
* ``study.journal``: the Optuna study (unless ``--storage`` put it elsewhere);
* ``trials.csv``: every proposal, its predicted latency, whether it was inside the window and
  its supernet scores; ``search.png``: scores against latency, best score against evaluations;
* with ``--pareto``: ``pareto.csv``/``pareto.png`` (the scored networks that no other beats in
  both proxy score and predicted latency) and ``arch-<budget>.json`` per budget.

Each pick is measured end to end on this machine before it is written, exactly as the
differentiable search's is (``nas.search.run._measured_checks``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from nas.search.blackbox import (
    STATE_FORMAT,
    Study,
    Window,
    open_storage,
    plot_study,
    space_signature,
    write_front_csv,
    write_trials_csv,
)
from nas.search.budget import format_ms
from nas.search.searcher import SearchConfig
from supernets.errors import NasError
from supernets.fileio import check_writable_dir, clear_run_files, refuse_used_out, write_atomic
from supernets.flops import complexity

__all__ = ["STATE_FILE", "search_blackbox"]

STATE_FILE = "strategy.json"
SUPERNET_DIR = "supernet"


def _load_state(out: Path) -> dict:
    path = out / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise NasError(f"{path}: no search here (expected a file written by nas search)") from None
    except (OSError, ValueError) as e:
        raise NasError(f"{path}: unreadable search state ({type(e).__name__}); start the "
                       "search again with --force") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise NasError(f"{path}: not a search state (expected format {STATE_FORMAT!r})")
    return state


def _oneshot_config(cfg: SearchConfig, space):
    from nas.search.oneshot import OneShotConfig

    return OneShotConfig(space=cfg.space, preset=None, data=cfg.data, rule=cfg.supernet_rule,
                         epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.weight_lr,
                         weight_decay=cfg.weight_decay, arch_split=cfg.arch_split,
                         train_samples=cfg.train_samples, seed=cfg.seed, threads=cfg.threads,
                         input_size=tuple(space.skeleton.input_size),
                         num_joints=space.skeleton.num_joints,
                         device=None if cfg.device == "cpu" else cfg.device)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _given_supernet(cfg: SearchConfig, space):
    """``--supernet PATH``: ``(supernet, its OneShotConfig, path, sha256, train seconds)``, checked
    against the search's space; None when the search trains its own."""
    from nas.search.oneshot import load_snapshot

    if not cfg.supernet:
        return None
    path = Path(cfg.supernet)
    try:
        supernet, scfg, state = load_snapshot(path)
    except NasError as e:
        raise NasError(f"--supernet {e}") from None
    if space_signature(scfg.space_obj()) != space_signature(space):
        s = scfg.space_obj()
        h, w = s.skeleton.input_size
        raise NasError(f"--supernet {path}: trained for space {s.name} at {h}x{w} with "
                       f"{s.skeleton.outputs}, not the search's {space.name} at "
                       f"{'x'.join(map(str, space.skeleton.input_size))} with "
                       f"{space.skeleton.outputs}")
    seconds = state.get("train_seconds") or sum(h["seconds"] for h in state.get("history", []))
    return supernet, scfg, path, _file_sha(path), seconds


def _train_supernet(cfg: SearchConfig, space, out: Path, progress: bool):
    """The search's own supernet, trained (or continued) in ``OUT/supernet``; None if
    interrupted."""
    from nas.search.oneshot import load_snapshot, train_oneshot

    scfg = _oneshot_config(cfg, space)
    where = out / SUPERNET_DIR
    log = where / "log.jsonl"
    done = len(log.read_text().splitlines()) if log.is_file() else 0
    if done < scfg.epochs:
        print(f"nas: training the supernet ({scfg.rule} rule, {scfg.epochs} epochs"
              + (f", from epoch {done + 1}" if done else "") + f") in {where}", file=sys.stderr)
    result = train_oneshot(scfg, where, progress=progress)
    if result["status"] != "complete":
        return None
    path = where / "oneshot.pt"
    supernet, scfg, state = load_snapshot(path)
    return (supernet, scfg, path, _file_sha(path),
            sum(h["seconds"] for h in state.get("history", [])))


def _worker(cfg: SearchConfig) -> int:
    """This process's stream in a shared study: 0 for a study of its own (reproducible from
    the seed); with ``--storage`` (shared by intent) torchrun's RANK + 1, else the process id,
    so that workers started together do not propose the same networks."""
    if cfg.storage is None:
        return 0
    rank = os.environ.get("RANK")
    return int(rank) + 1 if rank is not None else os.getpid()


def _windows(cfg: SearchConfig, s) -> list[Window]:
    from nas.search.run import budget_window

    budgets = cfg.budgets_ms or (cfg.budget_ms,)
    if s.accuracy_only:
        return [Window(b, None, None) for b in budgets]
    return [Window(b, *budget_window(cfg, b, s.bounds_ms[0])) for b in budgets]


def _clear(out: Path) -> None:
    from nas.search.run import RUN_FILES

    clear_run_files(out, RUN_FILES)
    for p in out.glob("arch-*.json"):
        p.unlink()
    if (out / SUPERNET_DIR).is_dir():
        shutil.rmtree(out / SUPERNET_DIR)


def search_blackbox(cfg: SearchConfig | None, out: Path, *, lut: str | None = None,
                    allow_foreign_lut: bool = False, progress: bool = True, resume: bool = False,
                    trials: int | None = None, force: bool = False) -> dict:
    from nas.search.oneshot import PathScorer
    from nas.search.run import RUN_FILES, setup

    out = Path(out)
    state = None
    if resume:
        state = _load_state(out)
        try:
            cfg = SearchConfig(**state["config"])
        except (TypeError, NasError) as e:
            raise NasError(f"{out / STATE_FILE}: config does not match this version ({e})"
                           ) from None
        if trials is not None:
            cfg.trials = max(cfg.trials, trials)
        lut = lut or state.get("lut_path")
    else:
        refuse_used_out(out, RUN_FILES, "search", force)
    check_writable_dir(out, "--resume" if resume else "--out")
    s = setup(cfg, lut=lut, allow_foreign_lut=allow_foreign_lut, progress=progress,
              resumed=state is not None)
    windows = _windows(cfg, s)
    given = _given_supernet(cfg, s.space)  # every input checked before anything is written
    if cfg.storage and "://" in cfg.storage:
        storage = open_storage(cfg.storage, out)
    if state is None and force:
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (cfg.storage and "://" in cfg.storage):
        storage = open_storage(cfg.storage, out)
    probe = state.get("probe") if state else (s.probe.to_dict() if s.probe else None)
    write_atomic(out / STATE_FILE, json.dumps(
        {"format": STATE_FORMAT, "config": cfg.to_dict(), "lut_path": str(s.table.path),
         "probe": probe}, indent=2, default=str) + "\n")

    t0 = time.perf_counter()
    got = given or _train_supernet(cfg, s.space, out, progress)
    if got is None:
        return _interrupted(out, "supernet training")
    supernet, scfg, supernet_path, supernet_sha, supernet_seconds = got
    scorer = PathScorer(supernet, scfg, bn_batches=cfg.score_bn_batches,
                        images=cfg.score_images, seed=cfg.seed)
    attrs = {"nas.space": space_signature(s.space), "nas.objective": cfg.objective,
             "nas.strategy": cfg.strategy,
             "nas.windows_ms": [[w.low, w.high] for w in windows],
             "nas.supernet_sha256": supernet_sha}
    study = Study(space=s.space, predictor=s.predictor, scorer=scorer, windows=windows,
                  strategy=cfg.strategy, objective=cfg.objective, pareto=cfg.pareto,
                  seed=cfg.seed, trials=cfg.trials, storage=storage, name=cfg.study,
                  attrs=attrs, worker=_worker(cfg))
    t1 = time.perf_counter()
    complete = study.run(progress=progress)
    rows = study.rows()
    write_trials_csv(out / "trials.csv", rows)
    if not complete:
        return _interrupted(out, "study")
    info = {"strategy": cfg.strategy, "objective": cfg.objective,
            "sampler": type(study.sampler).__name__, "study": cfg.study,
            "storage": _describe_storage(cfg.storage, out), **study.stats(),
            "study_seconds": time.perf_counter() - t1,
            "supernet": {"path": str(supernet_path), "sha256": supernet_sha,
                         "rule": scfg.rule, "epochs": scfg.epochs,
                         "train_seconds": supernet_seconds,
                         "seconds_this_run": t1 - t0 if not cfg.supernet else 0.0}}
    if info["evaluations"] < cfg.trials:
        print(f"nas: only {info['evaluations']} networks inside the window after "
              f"{info['proposed']} proposals (asked for {cfg.trials})", file=sys.stderr)
    return _finish(cfg, s, study, windows, info, out, probe)


def _describe_storage(url: str | None, out: Path) -> str:
    from nas.search.blackbox import _redact

    return _redact(url) if url else str(out / "study.journal")


def _interrupted(out: Path, what: str) -> dict:
    return {"status": "interrupted", "checkpoint": str(out / STATE_FILE),
            "stopped_in": what, "resume": f"nas search --resume {out}"}


def _pick(cfg: SearchConfig, s, study: Study, window: Window, name: str) -> dict:
    """The best scored network inside ``window``, measured (and replaced by the next best when
    it misses the budget as measured), as ``_measured_checks`` does for every strategy."""
    from nas.search.run import _measured_checks, _verdict

    rows = study.best(window=window)
    if not rows:
        raise NasError(f"no scored network inside the window {format_ms(window.low)} - "
                       f"{format_ms(window.high)} of budget {format_ms(window.budget_ms)} after "
                       f"{study.stats()['proposed']} proposals; raise --trials or the budget")
    ranked = [{"spec": s.space.spec(r["choices"], name=name), "predicted_ms": r["predicted_ms"],
               "source": f"trial {r['trial']}", "rank": i, "proxy": r}
              for i, r in enumerate(rows, 1)]
    bcfg = dataclasses.replace(cfg, budget_ms=window.budget_ms, budgets_ms=None, pareto=False)
    chosen, checks, feedback, measured = ranked[0], [], None, None
    win = None if window.low is None else (window.low, window.high)
    if not getattr(s.table, "foreign", False):
        ctx = dataclasses.replace(s, cfg=bcfg)
        chosen, checks, feedback = _measured_checks(ctx, None, ranked, win, name)
        measured = chosen["measured"]
    measured_ms = measured["median_ms"] if measured else None
    spec = chosen["spec"]
    c = complexity(spec)
    return {"spec": spec, "budget_ms": window.budget_ms,
            "window_ms": [window.low, window.high] if window.low is not None else None,
            "trial": chosen["proxy"]["trial"], "rank": chosen["rank"],
            "proxy": {k: chosen["proxy"][k] for k in ("loss", "metric")},
            "predicted_ms": chosen["predicted_ms"], "measured_ms": measured_ms,
            "measured": measured, "verdict": _verdict(measured_ms, window.budget_ms),
            "measured_over_budget": measured_ms / window.budget_ms if measured else None,
            "measure_checks": checks, "latency_feedback": feedback,
            "params": c.params, "macs": c.macs, "flops": c.flops,
            "top": [{"trial": r["trial"], "predicted_ms": r["predicted_ms"], "loss": r["loss"],
                     "metric": r["metric"]} for r in rows[:10]]}


def _finish(cfg: SearchConfig, s, study: Study, windows: list[Window], info: dict,
            out: Path, probe: dict | None) -> dict:
    from nas.search.run import budget_tag, latency_weights, provenance

    picks = []
    for w in windows:
        name = f"{s.space.name}-{budget_tag(w.budget_ms)}"
        picks.append(_pick(cfg, s, study, w, name))
    for p in picks:
        target = out / (f"arch-{budget_tag(p['budget_ms'])}.json" if cfg.pareto else "arch.json")
        if p["verdict"] == "over_budget":
            target.unlink(missing_ok=True)  # nothing downstream may take it for the result
        else:
            p["spec"].save(target)
            p["arch_file"] = str(target)
    rows = study.rows()
    front = study.front() if cfg.pareto else None
    if front is not None:
        write_front_csv(out / "pareto.csv", front)
    metric_name = "mIoU" if cfg.task == "seg" else "PCK@0.2"
    marks = [p["proxy"] | {"predicted_ms": p["predicted_ms"]} for p in picks]
    if front is not None:
        plot_study(rows, windows, cfg.objective, marks, out / "pareto.png", front=front,
                   metric_name=metric_name)
    plot_study(rows, windows, cfg.objective, marks, out / "search.png", metric_name=metric_name)
    main = picks[-1]  # the single budget, or the largest of a front's
    layers = [{"label": layer.label, "op": main["spec"].choices[layer.label]}
              for layer in s.space.choice_layers()]
    report = {
        "strategy": cfg.strategy,
        "arch": main["spec"].to_dict(),
        "verdict": main["verdict"],
        "budget_ms": main["budget_ms"],
        "window_ms": main["window_ms"],
        "accuracy_only": s.accuracy_only,
        "predicted_ms": main["predicted_ms"],
        "measured_ms": main["measured_ms"],
        "measured_over_budget": main["measured_over_budget"],
        "measured": main["measured"],
        "measure_checks": main["measure_checks"],
        "latency_feedback": main["latency_feedback"],
        "objective": cfg.objective if cfg.objective == "score" else "budget",
        "latency_weight": latency_weights(main["predicted_ms"], main["measured_ms"])
        if cfg.objective == "score" else None,
        "selected_by": f"{info['sampler']} over the supernet's held-out {cfg.objective} "
                       f"(rank {main['rank']} of the scored networks in the window)",
        "proxy": main["proxy"],
        "metric_name": metric_name,
        "params": main["params"], "macs": main["macs"], "flops": main["flops"],
        "layers": layers,
        "search": info,
        "picks": [{k: v for k, v in p.items() if k not in ("spec", "measured")}
                  | {"choices": dict(p["spec"].choices)} for p in picks] if cfg.pareto else None,
        "front": [{k: r[k] for k in ("trial", "predicted_ms", "loss", "metric")} for r in front]
        if front is not None else None,
        "space_bounds_ms": list(s.bounds_ms),
        "speed_probe": probe,
        **provenance(cfg, s.table),
    }
    write_atomic(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    report["out"] = str(out)
    return report
