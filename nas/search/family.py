"""Step 5 of a segmentation search: the winning head family's own supernet training and ranking.

The ranking's step 4 (``nas.search.rank``) picks the head family: the shortlist's own training
tells LR-ASPP from transposed-conv stages where the supernet's loss cannot, because each of a
segmentation space's 56 heads saw about 13 of the search's 720 weight steps. It cannot pick within
the family: on the pose ground truth (one head family) 60 own steps rank networks at Kendall tau
-0.08 where a uniformly trained supernet ranks them at 0.665 (results/posebench/
proxies_own_training.md, proxies.md). So once the family is known, the supernet goes on training
with the head restricted to it:

1. ``epochs`` more epochs of weight steps on the weight part, single paths drawn uniformly (every
   backbone choice, the head uniformly among the family's), the search's Adam continued: every
   head of the family now trains on a quarter of the steps (LR-ASPP: 4 widths) instead of a
   fifty-sixth, and the backbone with the heads the pick will have;
2. the family's networks of the ranking and ``samples`` more of the window with a head of the
   family (drawn from the learned probabilities otherwise, as the ranking draws) are scored by
   the supernet's held-out loss exactly as the ranking scores (BatchNorm recomputed, the same
   held-out crops); they come first, best first, and the rest of the ranking follows in its
   order (for the measured checks' fallbacks).

The stage writes ``family.pt`` into the search's folder after every epoch (its supernet, optimiser,
epoch and the ranking it started from): a stopped search resumes there (``nas search --resume``)
without ranking again. With several processes it runs on rank 0, as the ranking does.

Off by default (``SearchConfig.family_epochs`` 0, ``nas search --family-epochs N``): on the CamVid
proof in ``seg-mbv2`` (20 epochs) it picked an LR-ASPP network that retrained to 46.24 test mIoU,
against 46.38 for the shortlist's pick and 48.02 for the baseline
(results/benchmarks/seg_proof_family.md): the family's supernet does not tell these networks
apart better than the step before it.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nas.interrupt import stop_on_sigint
from nas.search.blackbox import choice_key
from nas.search.rank import draw_family, ranking_batches, score, window_sampler
from nas.search.searcher import collate
from supernets.errors import NasError
from supernets.fileio import write_atomic

__all__ = ["FAMILY_FILE", "family_stage", "load_family_state"]

FAMILY_FILE = "family.pt"
FORMAT = "nas.family/1"


def _records(ranked: list[dict]) -> list[dict]:
    return [{**{k: v for k, v in c.items() if k != "spec"},
             "name": c["spec"].name, "choices": dict(c["spec"].choices)} for c in ranked]


def _ranked(space, records: list[dict]) -> list[dict]:
    return [{**{k: v for k, v in r.items() if k not in ("name", "choices")},
             "spec": space.spec(r["choices"], r["name"])} for r in records]


def load_family_state(out: Path, searcher) -> dict | None:
    """The family stage a stopped search left in ``out`` (with its ranking as ``ranked``), or
    None when there is none; NasError naming the file when it is corrupt or of another search."""
    path = Path(out) / FAMILY_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise NasError(f"{path}: corrupt family-stage checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NasError(f"{path}: not a family-stage checkpoint (expected format {FORMAT!r})")
    if state.get("config") != searcher.cfg.to_dict():
        raise NasError(f"{path}: written by a search with other settings than "
                       f"{Path(out) / 'checkpoint.pt'} (delete it to run the stage again)")
    try:
        state["ranked"] = _ranked(searcher.space, state["ranked"])
    except (KeyError, NasError) as e:
        raise NasError(f"{path}: its ranking does not fit space {searcher.space.name} "
                       f"({e})") from None
    return state


def _save(path: Path, searcher, family: str, epoch: int, ranked: list[dict],
          seconds: float) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": searcher.cfg.to_dict(), "family": family,
                "epoch": epoch, "seconds": seconds, "supernet": searcher.supernet.state_dict(),
                "opt_w": searcher.opt_w.state_dict(), "ranked": _records(ranked)}, buf)
    write_atomic(path, buf.getvalue())


def _steps(searcher) -> int:
    """Steps of one family epoch: the whole weight part, as one process of the search sees it
    (the stage runs on rank 0 alone)."""
    return max(1, len(searcher.train_set) // searcher.cfg.batch_size)


def _train_epoch(searcher, heads: tuple[str, ...], label: str, epoch: int, bar: tqdm) -> bool:
    """One epoch of uniform single-path weight steps with the head among ``heads``; False when
    a stop was requested (``searcher.request_stop``; the epoch is then dropped: the stage
    resumes at epoch boundaries)."""
    cfg, space, supernet = searcher.cfg, searcher.space, searcher.supernet
    layers = space.choice_layers()
    data_epoch = cfg.epochs + 1 + epoch   # the ranking's own training took cfg.epochs + 1
    if hasattr(searcher.train_set, "set_epoch"):
        searcher.train_set.set_epoch(data_epoch)
    g = torch.Generator().manual_seed(cfg.seed * 104_729 + 31 + data_epoch * 7919)
    order = torch.randperm(len(searcher.train_set), generator=g).tolist()
    rng = np.random.default_rng([cfg.seed, 5_003, epoch])
    supernet.train()
    for step in range(_steps(searcher)):
        if searcher._stop:
            return False
        idx = [order[(step * cfg.batch_size + i) % len(order)] for i in range(cfg.batch_size)]
        batch = collate(searcher.train_set, idx, searcher.device)
        choices = {layer.label: layer.names[int(rng.integers(len(layer.names)))]
                   for layer in layers if layer.label != label}
        choices[label] = heads[int(rng.integers(len(heads)))]
        mixes = supernet.fixed_mixes(space.spec(choices))
        loss = searcher.task.loss(supernet(batch["image"], mixes), batch)
        searcher.opt_w.zero_grad(set_to_none=True)
        loss.backward()
        searcher.opt_w.step()
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3g}", refresh=False)
    return True


def family_stage(searcher, probs, ranked: list[dict], window, name: str, out: Path, *,
                 progress: bool = True, state: dict | None = None) -> list[dict] | None:
    """Steps 1-2 of the module doc after ``ranked`` (the ranking, best first; its first network's
    head gives the family). Returns the new ranking (the family's networks first, each with its
    ``family_loss``), or None when stopped (``family.pt`` written). ``state``: the stage a stopped
    search left (``load_family_state``), continued. Sets ``searcher.family`` (the report's)."""
    cfg, space = searcher.cfg, searcher.space
    label, families = space.head_families()
    path = Path(out) / FAMILY_FILE
    epoch, seconds = 0, 0.0
    if state is not None:
        ranked, epoch, seconds = state["ranked"], state["epoch"], state["seconds"]
        searcher.supernet.load_state_dict(state["supernet"])
        searcher.opt_w.load_state_dict(state["opt_w"])
    head = ranked[0]["spec"].choices[label]
    family = next(f for f, ops in families.items() if head in ops)
    heads = families[family]
    t0 = time.perf_counter()
    total = cfg.family_epochs * _steps(searcher)
    with stop_on_sigint(searcher.request_stop), tqdm(
            total=total, initial=epoch * _steps(searcher), disable=not progress,
            unit="step", desc=f"family {family}", dynamic_ncols=True) as bar:
        while epoch < cfg.family_epochs:
            if not _train_epoch(searcher, heads, label, epoch, bar):
                _save(path, searcher, family, epoch, ranked,
                      seconds + time.perf_counter() - t0)
                return None
            epoch += 1
            _save(path, searcher, family, epoch, ranked, seconds + time.perf_counter() - t0)
    bn_b, score_b = ranking_batches(searcher.train_set, searcher.arch_set, seed=cfg.seed,
                                    batch_size=cfg.batch_size, bn_batches=cfg.rank_bn_batches,
                                    images=cfg.rank_images, epoch=cfg.epochs,
                                    device=searcher.device)
    members = [c for c in ranked if c["spec"].choices[label] in heads]
    rng = np.random.default_rng(cfg.seed * 7_368_787 + 43)
    members += draw_family(window_sampler(space, searcher.predictor, window), probs, heads,
                           cfg.rank_samples, rng, {choice_key(c["spec"]) for c in ranked}, name,
                           f"family {family} stage")
    searcher.supernet.eval()
    for c in members:
        c["family_loss"] = score(searcher.supernet, c["spec"], bn_b, score_b, searcher.task.loss)
    members.sort(key=lambda c: c["family_loss"])
    keys = {id(c) for c in members}
    ranked = members + [c for c in ranked if id(c) not in keys]
    for i, c in enumerate(ranked):
        c["rank"] = i + 1
    searcher.family = {"family": family, "heads": list(heads), "epochs": cfg.family_epochs,
                       "steps": total, "candidates": len(members),
                       "seconds": round(seconds + time.perf_counter() - t0, 1)}
    return ranked
