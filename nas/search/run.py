"""One search end to end: table, budget check, data, search loop, derivation, report."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import nas
from nas.distributed import World, from_env
from nas.search.budget import format_ms
from nas.search.derive import derive
from nas.search.family import FAMILY_FILE, family_stage, load_family_state
from nas.search.rank import rank
from nas.search.report import plot_search, write_jsonl
from nas.search.searcher import SearchConfig, Searcher, load_checkpoint
from nas.tasks import get_task
from supernets.errors import NasError
from supernets.fileio import check_writable_dir, clear_run_files, refuse_used_out, write_atomic
from supernets.flops import complexity
from supernets.space import SearchSpace, get_space

__all__ = ["Setup", "budget_window", "prepare", "search", "setup"]

MEASURE_CHECKS = 3   # networks measured at most before the verdict
MEASURED_OK = (0.85, 1.0)  # measured / budget that ends the measured checks
OVER_BUDGET = 1.05   # measured / budget above this: the search fails (measurement noise below)
# what a search writes into its folder: a new search refuses a folder holding any (or, forced,
# deletes these and nothing else)
RUN_FILES = ("checkpoint.pt", "family.pt", "log.jsonl", "arch.json", "report.json", "search.png",
             # strategies that propose networks (nas.search.run_blackbox)
             "strategy.json", "trials.csv", "study.journal", "pareto.csv", "pareto.png")


def _space(cfg: SearchConfig) -> SearchSpace:
    return get_space(cfg.space, input_size=cfg.input_size, num_joints=cfg.num_joints)


def _check_device(table, cfg: SearchConfig) -> None:
    """The budget is a latency on the table's device: train anywhere, but a table of this
    machine must describe the device the search is run for."""
    from lut.device import canonical_device

    if table.foreign:
        return  # another machine's table, accepted with --allow-foreign-lut: nothing measured
    want = canonical_device(cfg.device)
    if table.device != want:
        raise NasError(f"--device {cfg.device}: table {table.path} describes {table.device}, so "
                       f"its budget is a latency on {table.device}; build a table for {want} "
                       f"(`nas lut build --device {cfg.device} --space {cfg.space}`) or search "
                       f"with --device {table.device}")


def _table(space: SearchSpace, cfg: SearchConfig, lut: str | None, allow_foreign: bool,
           progress: bool, *, probe: bool = True):
    """The table, and its speed probe (None when not probed).

    ``--lut PATH``: refused if it is another device's or its probe is off by more than 15%,
    unless ``allow_foreign``. The default table of this device: built when missing, and built
    again when it has no probes or its probe says it no longer describes this machine.
    """
    import lut as lutlib
    from lut import probe as lut_probe
    from lut.device import parse_device
    from lut.runtimes import Runtime

    if lut is not None:
        table = lutlib.LatencyTable.load(lut, allow_foreign=allow_foreign)
        if cfg.runtime is not None and (cfg.runtime, cfg.provider or table.runtime.provider) != \
                (table.runtime.name, table.runtime.provider):
            asked = f"--runtime {cfg.runtime}" + (f" --provider {cfg.provider}"
                                                  if cfg.provider else "")
            raise NasError(f"--lut {lut}: the table was measured in "
                           f"{table.runtime.describe()}, not in the runtime {asked} asks for; "
                           f"pass{table.runtime.flags() or ' --runtime torch'} or a table "
                           f"measured in that runtime")
        cfg.runtime, cfg.provider = table.runtime.name, table.runtime.provider
        missing = table.missing(space)
        if missing:
            t, (h, w) = table.space, space.skeleton.input_size
            th, tw = t.skeleton.input_size
            raise NasError(f"--lut {lut}: the table covers space {t.name} at {th}x{tw} with "
                           f"{t.skeleton.outputs} and lacks {len(missing)} rows of the "
                           f"search's space {space.name} at {h}x{w} with "
                           f"{space.skeleton.outputs}; pass the matching --space/"
                           f"--input/--joints or build its table: "
                           f"{table.build_command(space)}")
        _check_device(table, cfg)
        return table, (lut_probe.checked_probe(table, allow_foreign) if probe else None)
    runtime = Runtime.parse(cfg.runtime, cfg.provider, parse_device(cfg.device))
    cfg.runtime, cfg.provider = runtime.name, runtime.provider
    path = lutlib.default_table_path(space, cfg.device, runtime=runtime)
    reason, result = None, None
    if not path.exists():
        reason = f"no latency table for space {space.name} on this device at {path}"
    else:
        table = lutlib.LatencyTable.load(path)
        if not probe:
            return table, None
        if not table.meta.get("probes"):
            reason = f"{path} has no speed probes (built by an older version)"
        else:
            result = lut_probe.probe_table(table)
            if not result.ok:
                reason = f"{path} does not describe this machine now: its speed probe measured " \
                         f"{result.describe()}"
    if reason is None:
        return table, result
    print(f"nas: {reason}; building a table for this machine now (once per device)",
          file=sys.stderr)
    lutlib.build_table(space, cfg.device, out=path, progress=progress,
                       resume=not path.exists(), runtime=runtime)
    table = lutlib.LatencyTable.load(path)
    return table, lut_probe.ProbeResult.at_build(table)


def _datasets(cfg: SearchConfig, space: SearchSpace):
    from nas.search.oneshot import EpochSubset, split_datasets

    full, weight_idx, arch_idx = split_datasets(
        space, cfg.data, seed=cfg.seed, arch_split=cfg.arch_split, batch_size=cfg.batch_size,
        train_samples=cfg.train_samples)
    return EpochSubset(full, weight_idx), EpochSubset(full, arch_idx)


@dataclass
class Setup:
    """What every strategy needs before its first step: the space, the table and the corrected
    predictor, the probe, the space's predicted bounds and whether the budget constrains."""
    cfg: SearchConfig
    space: SearchSpace
    table: object
    predictor: object
    probe: object | None
    bounds_ms: tuple[float, float]
    accuracy_only: bool


def setup(cfg: SearchConfig, *, lut: str | None = None, allow_foreign_lut: bool = False,
          progress: bool = True, resumed: bool = False) -> Setup:
    """Table, probe and budget checks; raises NasError before any output exists.

    A new search probes its table first (``lut.probe``) and predicts with the table's latency
    times the probe's ratio for the whole run (``cfg.latency_correction``); a resumed one keeps
    the correction it started with, so that it ends with the same architecture.
    """
    import lut as lutlib

    get_task(cfg.task)   # a one-line error for a task the search cannot run
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    space = _space(cfg)
    table, probe = _table(space, cfg, lut, allow_foreign_lut, progress, probe=not resumed)
    if probe is not None:
        cfg.latency_correction = probe.ratio
        print(f"nas: speed probe of {table.path}: {probe.describe()}", file=sys.stderr)
    predictor = lutlib.LatencyPredictor(table).corrected(cfg.latency_correction)
    (_, fast_ms), (_, slow_ms) = predictor.bounds(space)
    budgets = cfg.budgets_ms or (cfg.budget_ms,)
    if fast_ms > min(budgets):
        h, w = space.skeleton.input_size
        seen = (f"measures {format_ms(probe.fastest_ms)} here (speed probe)"
                if probe is not None and probe.fastest_ms else f"takes {format_ms(fast_ms)}")
        raise NasError(
            f"budget {format_ms(min(budgets))} is out of reach on this device: the fastest "
            f"architecture of space {space.name} at {h}x{w} {seen} (table {table.path}); use "
            f"--budget {format_ms(_round_up(fast_ms / cfg.window[1]))} or more, or a smaller "
            "space or input")
    accuracy_only = slow_ms <= cfg.window[1] * cfg.budget_ms
    if accuracy_only:
        print(f"nas: every architecture of {space.name} is within the budget (slowest "
              f"{format_ms(slow_ms)}); searching for accuracy alone", file=sys.stderr)
    return Setup(cfg, space, table, predictor, probe, (fast_ms, slow_ms), accuracy_only)


def latency_weights(predicted_ms: float, measured_ms: float | None) -> dict:
    """``--objective score``: W(T) of the pick, predicted and measured."""
    from nas.tasks.seg.score import latency_weight

    return {"predicted": latency_weight(predicted_ms),
            "measured": latency_weight(measured_ms) if measured_ms else None}


def budget_window(cfg: SearchConfig, budget_ms: float, fastest_ms: float) -> tuple[float, float]:
    """The predicted-latency window of a budget: ``cfg.window`` x budget, its top widened up to
    the budget itself when the space's fastest network is just above it. ``--objective score``
    has no floor: the budget is W's zero (10 ms), and any latency under it may score best."""
    low, high = (w * budget_ms for w in cfg.window)
    if cfg.objective == "score":
        low = 0.0
    return low, max(high, min(budget_ms, fastest_ms))


def prepare(cfg: SearchConfig, *, lut: str | None = None, allow_foreign_lut: bool = False,
            progress: bool = True, resumed: bool = False, world: World | None = None
            ) -> Searcher:
    """Everything up to the first training step of a differentiable search (``setup``, data,
    supernet); raises NasError before any output exists.

    With several processes (``nas.distributed``) rank 0 sets up first, alone: its speed probe
    (or the build of a missing table) runs with the other ranks idle; they then load the same
    table with rank 0's correction, and every rank must see the same device identity."""
    world = world or World()
    if world.is_main:
        s = setup(cfg, lut=lut, allow_foreign_lut=allow_foreign_lut, progress=progress,
                  resumed=resumed)
    world.barrier()
    correction, probe, path = world.broadcast(
        (cfg.latency_correction, s.probe.to_dict() if s.probe is not None else None,
         str(s.table.path)) if world.is_main else None)
    if not world.is_main:
        cfg.latency_correction = correction
        s = setup(cfg, lut=lut or path, allow_foreign_lut=allow_foreign_lut, progress=False,
                  resumed=True)
    if world.enabled:
        from lut.fingerprint import device_slug, fingerprint

        world.check_agree(device_slug(fingerprint(torch.device(world.device(cfg.device)),
                                                  s.table.threads)),
                          "the device the latency table describes")
    train_set, arch_set = _datasets(cfg, s.space)
    searcher = Searcher(cfg, s.space, s.predictor, train_set, arch_set,
                        accuracy_only=s.accuracy_only, bounds_ms=s.bounds_ms, world=world)
    searcher.probe = probe
    return searcher


def _round_up(ms: float) -> float:
    """A budget to suggest: ``ms`` rounded up to two significant digits (0.01 ms at least)."""
    step = max(10 ** (math.floor(math.log10(ms)) - 1), 0.01)
    return math.ceil(ms / step - 1e-9) * step


def search(cfg: SearchConfig | None, out: Path, *, lut: str | None = None,
           allow_foreign_lut: bool = False, progress: bool = True, resume: bool = False,
           epochs: int | None = None, trials: int | None = None, force: bool = False,
           on_step=None) -> dict:
    """Run a search writing into ``out``, or resume the one there (``cfg`` from its checkpoint;
    ``epochs`` may extend a differentiable one, ``trials`` one that proposes networks). A new
    search refuses an ``out`` holding another search's files unless ``force``, which deletes
    them (``RUN_FILES`` only) once every input has been checked. Returns the report, or a
    status dict if stopped early."""
    from nas.search.blackbox import BLACKBOX
    from nas.search.run_blackbox import STATE_FILE, search_blackbox

    out = Path(out)
    if (out / STATE_FILE).exists() if resume else cfg.strategy in BLACKBOX:
        return search_blackbox(cfg, out, lut=lut, allow_foreign_lut=allow_foreign_lut,
                               progress=progress, resume=resume, trials=trials, force=force)
    ckpt = out / "checkpoint.pt"
    state = None
    if resume:
        state = load_checkpoint(ckpt)
        try:
            cfg = SearchConfig(**state["config"])
        except TypeError as e:
            raise NasError(f"{ckpt}: checkpoint config does not match this version ({e})") from None
        if epochs is not None:
            cfg.epochs = max(cfg.epochs, epochs)
        lut = lut or state.get("lut_path")
    else:
        refuse_used_out(out, RUN_FILES, "search", force)
    check_writable_dir(out, "--resume" if resume else "--out")  # before any work
    world = from_env(cfg.device)
    searcher = prepare(cfg, lut=lut, allow_foreign_lut=allow_foreign_lut, progress=progress,
                       resumed=state is not None, world=world)
    if state is not None:
        searcher.probe = state.get("probe")
    if state is not None:
        try:
            searcher.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as e:
            raise NasError(f"{ckpt}: checkpoint does not match this search ({e})") from None
    elif force and world.is_main:
        clear_run_files(out, RUN_FILES)
    out.mkdir(parents=True, exist_ok=True)
    complete = searcher.run(ckpt, progress=progress, on_step=on_step)
    if world.is_main:
        write_jsonl(out / "log.jsonl", searcher.history)
    if not complete:
        return {"status": "interrupted", "checkpoint": str(ckpt),
                "resume": f"nas search --resume {out}"}
    # derivation, ranking and the measured check: rank 0, with the others idle
    return world.broadcast(_finish(searcher, out, progress=progress) if world.is_main else None)


def _measured_checks(searcher: Searcher, probs: dict, ranked: list[dict],
                     window: tuple[float, float] | None, name: str) -> tuple[dict, list, dict]:
    """Measure the selected network end to end; while it misses [0.85, 1.0] x budget, feed the
    measurements back into the predictor and select again. Returns (chosen, checks, feedback).

    Every measurement updates the run's correction of the table (geometric mean of measured /
    predicted over the networks measured so far, times the probe's correction); the next
    network is the best-ranked candidate inside the window by the corrected predictor, or one
    derived again with it. The window stays [0.87, 0.97] x budget: when the corrected
    predictor's fastest network is above it, no network of the space fits and the loop stops.
    The result is the measured network closest under the budget (the slowest of those that
    meet it), or, if none does, the fastest measured.
    """
    from lut.isolated import measure_network_isolated

    cfg, space, base = searcher.cfg, searcher.space, searcher.predictor
    table = base.table
    candidate, predictor = ranked[0], base
    checks, measured_candidates, ratios = [], [], []
    for attempt in range(MEASURE_CHECKS):
        measured = measure_network_isolated(candidate["spec"], table.device, batch=table.batch,
                                            dtype=table.dtype, threads=table.threads,
                                            cuda_graphs=_cuda_graphs(table),
                                            runtime=table.runtime)
        ms = measured["median_ms"]
        checks.append({"arch": candidate["spec"].name, "choices": dict(candidate["spec"].choices),
                       "source": candidate["source"],
                       "predicted_ms": predictor.latency(candidate["spec"]), "measured_ms": ms,
                       "correction": predictor.correction,
                       "window_ms": list(window) if window else None})
        measured_candidates.append({**candidate, "predicted_ms": checks[-1]["predicted_ms"],
                                    "measured": measured})
        ratios.append(ms / base.latency(candidate["spec"]))
        if MEASURED_OK[0] * cfg.budget_ms <= ms <= MEASURED_OK[1] * cfg.budget_ms:
            break
        if window is None and ms <= cfg.budget_ms:
            break  # searching for accuracy alone: any network under the budget will do
        if attempt + 1 == MEASURE_CHECKS:
            break
        predictor = base.corrected(base.correction * float(np.exp(np.mean(np.log(ratios)))))
        (_, fast_ms), _ = predictor.bounds(space)
        window = budget_window(cfg, cfg.budget_ms, fast_ms)
        if fast_ms > window[1]:
            break  # the space's fastest network misses the budget on this machine now
        tried = {tuple(sorted(c["choices"].items())) for c in checks}
        inside = [c for c in ranked if window[0] <= predictor.latency(c["spec"]) <= window[1]
                  and tuple(sorted(c["spec"].choices.items())) not in tried]
        if inside:
            candidate = inside[0]
        elif probs is None:
            break  # proposed networks only: none left inside the corrected window
        else:
            again = derive(space, probs, predictor.latency, window, name=name)
            if tuple(sorted(again.spec.choices.items())) in tried:
                break  # the corrected predictor picks a network measured already
            candidate = {"spec": again.spec, "predicted_ms": again.latency_ms,
                         "source": "derived"}
    meets = [c for c in measured_candidates if c["measured"]["median_ms"] <= cfg.budget_ms]
    chosen = (max(meets, key=lambda c: c["measured"]["median_ms"]) if meets
              else min(measured_candidates, key=lambda c: c["measured"]["median_ms"]))
    feedback = {"measured_over_predicted": ratios, "final_correction": predictor.correction,
                "probe_correction": base.correction, "window_ms": list(window) if window else None}
    return chosen, checks, feedback


def _cuda_graphs(table) -> bool:
    """Whether the table timed CUDA-graph replays: its networks are then measured that way."""
    return bool(table.meta.get("timing", {}).get("cuda_graphs"))


def _verdict(measured_ms: float | None, budget_ms: float) -> str:
    if measured_ms is None:
        return "unmeasured"
    ratio = measured_ms / budget_ms
    return "met" if ratio <= 1.0 else "met_within_noise" if ratio <= OVER_BUDGET else "over_budget"


def _selected_by(chosen: dict, n: int, family: dict | None) -> str:
    """How the pick was chosen: the steps of ``nas.search.rank`` (and ``nas.search.family``)
    that ordered it."""
    if not chosen.get("rank"):
        return "derivation"
    if "family_loss" in chosen:
        how = (f"supernet ranking, the shortlist's own training and the {family['family']} "
               f"family's supernet ({family['epochs']} epochs)")
    elif "finetune_loss" in chosen:
        how = "supernet ranking and the shortlist's own training"
    else:
        how = "supernet ranking"
    return f"{how} (rank {chosen['rank']} of {n})"


def _finish(searcher: Searcher, out: Path, *, progress: bool = True) -> dict:
    cfg, space, predictor = searcher.cfg, searcher.space, searcher.predictor
    table = predictor.table
    probs = {lb: p.detach().cpu() for lb, p in searcher.arch.probs().items()}
    window = None
    if not searcher.accuracy_only:
        window = budget_window(cfg, cfg.budget_ms, searcher.bounds_ms[0])
    name = f"{space.name}-{_budget_tag(cfg)}"
    d = derive(space, probs, predictor.latency, window, name=name)
    searcher.family = None
    family_state = load_family_state(out, searcher) if cfg.family_epochs else None
    if cfg.rank_samples > 0:
        ranked = (family_state["ranked"] if family_state is not None
                  else rank(searcher, probs, d, window, name))
        if cfg.family_epochs:   # a seg space with the shortlist step (SearchConfig checks)
            ranked = family_stage(searcher, probs, ranked, window, name, out,
                                  progress=progress, state=family_state)
            if ranked is None:
                return {"status": "interrupted", "checkpoint": str(out / FAMILY_FILE),
                        "resume": f"nas search --resume {out}"}
    else:
        ranked = [{"spec": d.spec, "predicted_ms": d.latency_ms, "source": "derived"}]
    chosen, checks, feedback = ranked[0], [], None
    measured = None
    if not getattr(table, "foreign", False):
        chosen, checks, feedback = _measured_checks(searcher, probs, ranked, window, name)
        measured = chosen["measured"]
        window = tuple(feedback["window_ms"]) if feedback["window_ms"] else None
    measured_ms = measured["median_ms"] if measured else None
    verdict = _verdict(measured_ms, cfg.budget_ms)
    fastest_measured = None
    if verdict == "over_budget":
        from lut.isolated import measure_network_isolated

        (fastest, _), _ = predictor.bounds(space)
        fastest_measured = measure_network_isolated(
            fastest, table.device, batch=table.batch, dtype=table.dtype,
            threads=table.threads, cuda_graphs=_cuda_graphs(table),
            runtime=table.runtime)["median_ms"]
    spec = chosen["spec"]
    argmax = searcher.argmax_spec()
    changed = [lb for lb in spec.choices if spec.choices[lb] != argmax.choices[lb]]
    in_window = window is None or window[0] <= chosen["predicted_ms"] <= window[1]
    c = complexity(spec)
    layers = []
    for layer in space.choice_layers():
        op = spec.choices[layer.label]
        layers.append({"label": layer.label, "op": op,
                       "prob": round(float(probs[layer.label][layer.index(op)]), 4),
                       "argmax": layer.names[int(probs[layer.label].argmax())]})
    report = {
        "arch": spec.to_dict(),
        "verdict": verdict,
        "budget_ms": cfg.budget_ms,
        "window_ms": list(window) if window else None,
        "accuracy_only": searcher.accuracy_only,
        "predicted_ms": chosen["predicted_ms"],
        "argmax_predicted_ms": d.argmax_latency_ms,
        "changed_from_argmax": changed,
        "in_window": in_window,
        "selected_by": _selected_by(chosen, len(ranked), searcher.family),
        "proxy_loss": chosen.get("proxy_loss"),
        "finetune_loss": chosen.get("finetune_loss"),
        "family_loss": chosen.get("family_loss"),
        "ranking": [{"rank": c.get("rank"), "source": c["source"],
                     "predicted_ms": c["predicted_ms"], "proxy_loss": c.get("proxy_loss"),
                     "finetune_loss": c.get("finetune_loss"),
                     "family_loss": c.get("family_loss"),
                     "choices": dict(c["spec"].choices)} for c in ranked]
        if cfg.rank_samples > 0 else None,
        "ranking_seconds": getattr(searcher, "rank_seconds", None),
        "finetune_steps": cfg.rank_finetune if cfg.rank_samples > 0 else 0,
        "finetune_seconds": getattr(searcher, "finetune_seconds", None),
        "family_stage": searcher.family,
        "processes": searcher.world.size,
        "batch_size_per_rank": cfg.batch_size,
        "global_batch_size": cfg.batch_size * searcher.world.size,
        "arch_batch_size_per_rank": cfg.arch_batch_size,
        "measured_ms": measured_ms,
        "measured": measured,
        "measured_over_budget": measured_ms / cfg.budget_ms if measured else None,
        "objective": cfg.objective if searcher.score_objective else "budget",
        "latency_weight": latency_weights(chosen["predicted_ms"], measured_ms)
        if searcher.score_objective else None,
        "measure_checks": checks,
        "latency_feedback": feedback,
        "fastest_measured_ms": fastest_measured,
        "space_bounds_ms": list(searcher.bounds_ms),
        "speed_probe": getattr(searcher, "probe", None),
        "params": c.params, "macs": c.macs, "flops": c.flops,
        "layers": layers,
        "lam_trajectory": searcher.lam_trajectory,
        "final_entropy": searcher.arch.entropy(),
        **provenance(cfg, table),
    }
    if verdict == "over_budget":
        # no arch.json: nothing downstream may take a network over its budget for the result
        (out / "arch.json").unlink(missing_ok=True)
        report["suggested_budget_ms"] = _round_up(measured_ms * 1.0001)
    else:
        spec.save(out / "arch.json")
    write_atomic(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    plot_search(searcher.history, {layer.label: layer.names for layer in space.choice_layers()},
                cfg.budget_ms, out / "search.png")
    report["out"] = str(out)
    return report


def provenance(cfg: SearchConfig, table) -> dict:
    """Config, seed, versions, table and command: what a report needs to be reproduced."""
    return {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "versions": {"nas": nas.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "lut": {"path": str(table.path), "sha256": _sha256(Path(table.path)),
                "fingerprint": table.fingerprint, "runtime": table.runtime.describe()},
        "command": shlex.join(["nas", *sys.argv[1:]]) if Path(sys.argv[0]).name == "nas"
        else shlex.join(sys.argv),
    }


def budget_tag(budget_ms: float) -> str:
    return format_ms(budget_ms).replace(".", "p")


def _budget_tag(cfg: SearchConfig) -> str:
    return budget_tag(cfg.budget_ms)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
