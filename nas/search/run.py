"""One search end to end: table, budget check, data, search loop, derivation, report."""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

import nas
from nas.search.budget import format_ms
from nas.search.derive import derive
from nas.search.rank import rank
from nas.search.report import plot_search, write_jsonl
from nas.search.searcher import SearchConfig, Searcher, load_checkpoint
from supernets.errors import NasError
from supernets.fileio import check_writable_dir, write_atomic
from supernets.flops import complexity
from supernets.space import SearchSpace, get_space

__all__ = ["prepare", "search"]

TASKS = ("pose",)
MEASURE_CHECKS = 3   # derive-and-measure rounds before reporting a network over its budget
# what a search writes into its folder: a new search refuses a folder holding any (or, forced,
# deletes these and nothing else)
RUN_FILES = ("checkpoint.pt", "log.jsonl", "arch.json", "report.json", "search.png")


def _space(cfg: SearchConfig) -> SearchSpace:
    return get_space(cfg.space, input_size=cfg.input_size, num_joints=cfg.num_joints)


def _table(space: SearchSpace, cfg: SearchConfig, lut: str | None, allow_foreign: bool,
           progress: bool):
    import lut as lutlib

    if lut is not None:
        path = Path(lut)
    else:
        path = lutlib.default_table_path(space, cfg.device)
        if not path.exists():
            print(f"nas: no latency table for space {space.name} on this device at {path}; "
                  "building it now (once per device)", file=sys.stderr)
            path = lutlib.build_table(space, cfg.device, out=path,
                                      progress=progress)
    table = lutlib.LatencyTable.load(path, allow_foreign=allow_foreign)
    return table, lutlib.LatencyPredictor(table)


def _datasets(cfg: SearchConfig, space: SearchSpace):
    from nas.pose import make_dataset

    sk = space.skeleton
    full = make_dataset(cfg.data, "train", sk.input_size, sk.heatmap_size, seed=cfg.seed,
                        augment=True, num_joints=sk.num_joints,
                        limit=None if cfg.data else cfg.train_samples,
                        synthetic_size=cfg.train_samples)
    if full.num_joints != sk.num_joints:
        raise NasError(f"--data {cfg.data}: {full.num_joints} joints, but space {space.name} "
                       f"predicts {sk.num_joints}")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_arch = max(cfg.batch_size, int(round(len(full) * cfg.arch_split)))
    if len(full) - n_arch < cfg.batch_size:
        raise NasError(f"--data {cfg.data or '(synthetic)'}: {len(full)} samples are too few "
                       f"for batch size {cfg.batch_size} and an architecture split")
    return _Subset(full, order[n_arch:]), _Subset(full, order[:n_arch])


class _Subset(torch.utils.data.Dataset):
    def __init__(self, base, indices: list[int]):
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def prepare(cfg: SearchConfig, *, lut: str | None = None, allow_foreign_lut: bool = False,
            progress: bool = True) -> Searcher:
    """Everything up to the first training step; raises NasError before any output exists."""
    if cfg.task not in TASKS:
        raise NasError(f"--task {cfg.task!r}: expected one of {', '.join(TASKS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    space = _space(cfg)
    table, predictor = _table(space, cfg, lut, allow_foreign_lut, progress)
    (_, fast_ms), (_, slow_ms) = predictor.bounds(space)
    high = cfg.window[1] * cfg.budget_ms
    if fast_ms > cfg.budget_ms:
        raise NasError(
            f"budget {format_ms(cfg.budget_ms)} is out of reach: the fastest architecture of space "
            f"{space.name} at {space.skeleton.input_size[0]}x{space.skeleton.input_size[1]} takes "
            f"{format_ms(fast_ms)} on this device (table {table.path}); "
            f"use --budget {format_ms(fast_ms / cfg.window[1])} or more, or a smaller "
            "space or input")
    accuracy_only = slow_ms <= high
    if accuracy_only:
        print(f"nas: every architecture of {space.name} is within the budget (slowest "
              f"{format_ms(slow_ms)}); searching for accuracy alone", file=sys.stderr)
    train_set, arch_set = _datasets(cfg, space)
    return Searcher(cfg, space, predictor, train_set, arch_set, accuracy_only=accuracy_only,
                    bounds_ms=(fast_ms, slow_ms))


def search(cfg: SearchConfig | None, out: Path, *, lut: str | None = None,
           allow_foreign_lut: bool = False, progress: bool = True, resume: bool = False,
           epochs: int | None = None, force: bool = False, on_step=None) -> dict:
    """Run a search writing into ``out``, or resume the one there (``cfg`` from its checkpoint;
    ``epochs`` may extend it). A new search refuses an ``out`` holding another search's files
    unless ``force``, which deletes them (``RUN_FILES`` only) once every input has been
    checked. Returns the report, or a status dict if stopped early."""
    out = Path(out)
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
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held and not force:
            raise NasError(f"{out}: already holds a search ({', '.join(held)}); continue it "
                           f"with --resume {out}, choose another --out, or pass --force to "
                           "replace it")
    check_writable_dir(out, "--resume" if resume else "--out")  # before any work
    searcher = prepare(cfg, lut=lut, allow_foreign_lut=allow_foreign_lut, progress=progress)
    if state is not None:
        try:
            searcher.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as e:
            raise NasError(f"{ckpt}: checkpoint does not match this search ({e})") from None
    elif force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    complete = searcher.run(ckpt, progress=progress, on_step=on_step)
    write_jsonl(out / "log.jsonl", searcher.history)
    if not complete:
        return {"status": "interrupted", "checkpoint": str(ckpt),
                "resume": f"nas search --resume {out}"}
    return _finish(searcher, out)


def _finish(searcher: Searcher, out: Path) -> dict:
    cfg, space, predictor = searcher.cfg, searcher.space, searcher.predictor
    table = predictor.table
    probs = {lb: p.detach().cpu() for lb, p in searcher.arch.probs().items()}
    window = None
    if not searcher.accuracy_only:
        low, high = (w * cfg.budget_ms for w in cfg.window)
        # a budget just above the fastest network: widen the top up to the budget itself
        window = (low, max(high, min(cfg.budget_ms, searcher.bounds_ms[0])))
    name = f"{space.name}-{_budget_tag(cfg)}"
    d = derive(space, probs, predictor.latency, window, name=name)
    if cfg.rank_samples > 0:
        ranked = rank(searcher, probs, d, window, name)
    else:
        ranked = [{"spec": d.spec, "predicted_ms": d.latency_ms, "source": "derived"}]
    chosen = ranked[0]
    measured, checks = None, []
    if not getattr(table, "foreign", False):
        from lut.isolated import measure_network_isolated

        # The budget is a promise about the measured latency: a network measuring over the
        # budget is replaced, with the window scaled by its own measured/predicted ratio (the
        # table's error on that network), by the best-ranked candidate inside the new window
        # (derived again if none is), at most MEASURE_CHECKS networks in all.
        for attempt in range(MEASURE_CHECKS):
            measured = measure_network_isolated(chosen["spec"], cfg.device, batch=table.batch,
                                                dtype=table.dtype, threads=table.threads)
            checks.append({"arch": chosen["spec"].name, "choices": dict(chosen["spec"].choices),
                           "predicted_ms": chosen["predicted_ms"],
                           "measured_ms": measured["median_ms"],
                           "window_ms": list(window) if window else None})
            if (window is None or measured["median_ms"] <= cfg.budget_ms
                    or attempt + 1 == MEASURE_CHECKS):
                break
            ratio = measured["median_ms"] / chosen["predicted_ms"]
            window = (window[0] / ratio, window[1] / ratio)
            tried = {tuple(sorted(c["choices"].items())) for c in checks}
            inside = [c for c in ranked if window[0] <= c["predicted_ms"] <= window[1]
                      and tuple(sorted(c["spec"].choices.items())) not in tried]
            if inside:
                chosen = inside[0]
            else:
                again = derive(space, probs, predictor.latency, window, name=name)
                chosen = {"spec": again.spec, "predicted_ms": again.latency_ms,
                          "source": "derived"}
    spec = chosen["spec"]
    argmax = searcher.argmax_spec()
    changed = [lb for lb in spec.choices if spec.choices[lb] != argmax.choices[lb]]
    in_window = window is None or window[0] <= chosen["predicted_ms"] <= window[1]
    c = complexity(spec)
    layers = []
    for layer in space.choice_layers():
        name = spec.choices[layer.label]
        layers.append({"label": layer.label, "op": name,
                       "prob": round(float(probs[layer.label][layer.index(name)]), 4),
                       "argmax": layer.names[int(probs[layer.label].argmax())]})
    report = {
        "arch": spec.to_dict(),
        "budget_ms": cfg.budget_ms,
        "window_ms": list(window) if window else None,
        "accuracy_only": searcher.accuracy_only,
        "predicted_ms": chosen["predicted_ms"],
        "argmax_predicted_ms": d.argmax_latency_ms,
        "changed_from_argmax": changed,
        "in_window": in_window,
        "selected_by": f"supernet ranking (rank {chosen['rank']} of {len(ranked)})"
        if chosen.get("rank") else "derivation",
        "proxy_loss": chosen.get("proxy_loss"),
        "ranking": [{"rank": c.get("rank"), "source": c["source"],
                     "predicted_ms": c["predicted_ms"], "proxy_loss": c.get("proxy_loss"),
                     "choices": dict(c["spec"].choices)} for c in ranked]
        if cfg.rank_samples > 0 else None,
        "ranking_seconds": getattr(searcher, "rank_seconds", None),
        "measured_ms": measured["median_ms"] if measured else None,
        "measured": measured,
        "measured_over_budget": measured["median_ms"] / cfg.budget_ms if measured else None,
        "measure_checks": checks,
        "space_bounds_ms": list(searcher.bounds_ms),
        "params": c.params, "macs": c.macs, "flops": c.flops,
        "layers": layers,
        "lam_trajectory": searcher.lam_trajectory,
        "final_entropy": searcher.arch.entropy(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "versions": {"nas": nas.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "lut": {"path": str(table.path), "sha256": _sha256(Path(table.path)),
                "fingerprint": table.fingerprint},
        "command": shlex.join(["nas", *sys.argv[1:]]) if Path(sys.argv[0]).name == "nas"
        else shlex.join(sys.argv),
    }
    spec.save(out / "arch.json")
    write_atomic(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    plot_search(searcher.history, {layer.label: layer.names for layer in space.choice_layers()},
                cfg.budget_ms, out / "search.png")
    report["out"] = str(out)
    return report


def _budget_tag(cfg: SearchConfig) -> str:
    return format_ms(cfg.budget_ms).replace(".", "p")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
