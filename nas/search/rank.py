"""Ranking derived candidates with the trained supernet (one-shot evaluation).

At CPU scale a search makes a few hundred architecture steps, and the choice probabilities end
close to uniform: the most probable architecture is then decided by small margins, and
derivation (``nas.search.derive``) mostly fits it into the latency window. The supernet's
weights, trained with uniformly drawn paths (single-path one-shot, as SPOS and Once-for-All
train theirs), carry more information than those margins. So, after the search:

1. candidates: the derived architecture, plus ``samples`` distinct architectures of the latency
   window drawn from the learned choice probabilities conditioned on the window
   (``draw="window"``, the default: ``nas.search.window.WindowSampler`` with the probabilities as
   weights, so a network's chance is the product of its choices' probabilities among the
   networks of the window, exactly). The probabilities carry what the search learned (on the
   LSP ground truth a network's log-probability under them ranks its PCK at Kendall tau 0.24 to
   0.42 over three seeds) and the window draw keeps all of it; ``draw="fit"``, the earlier way,
   draws each layer and then fits the draw into the window by derivation, which moves layers by
   log-probability per millisecond and so trades what was learned for latency
   (results/benchmarks/search_quality.md compares the two); ``draw="evolve"`` spends the same
   evaluations as an evolutionary search would (SPOS, Once-for-All): a quarter as window draws
   from the probabilities, the rest as mutations of the best scored so far (each layer kept with
   probability ``keep``, else moved to another candidate in proportion to its learned
   probability; drawn among the window's networks, so every mutation is inside the window),
   each scored before the next is drawn (on the LSP ground truth it found a lower best proxy
   loss than the window draw on two searches of three, but not better networks: mean 89.4th
   against 90.1st percentile on the same three searches, results/benchmarks/search_quality.md;
   so "window" stays the default);
2. each candidate's BatchNorm statistics are recomputed on its own path (``bn_batches`` batches
   of the weight split, cumulative averages), since the supernet's running statistics mix every
   path that went through a layer;
3. each is scored by the task loss on a fixed set of images of the architecture split (held out
   from the weight steps), the same images and augmentation for every candidate;
4. candidates come back best first; the search takes the first and keeps the table in its report.

Every draw comes from a generator seeded by the search's seed, so the ranking is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

from nas.search.blackbox import choice_key
from nas.search.derive import Derivation, derive
from nas.search.searcher import collate
from nas.search.window import WindowSampler
from supernets.errors import NasError
from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["DRAWS", "batches", "candidates", "evolve", "rank", "score"]


DRAWS = ("window", "fit", "evolve")


def candidates(space: SearchSpace, probs: Mapping[str, torch.Tensor], predictor,
               window: tuple[float, float] | None, samples: int, seed: int, name: str,
               first: Derivation | None = None, draw: str = "window",
               evaluate: Callable[[ArchSpec], float] | None = None) -> list[dict]:
    """The derived architecture (``first``, derived here when not given) first, then up to
    ``samples`` distinct others inside the window, drawn as ``draw`` says (module docstring):
    ``{"spec", "predicted_ms", "source"}`` each. ``predictor``: the latency table's predictor
    (``latency(spec)`` in ms; ``draw="window"`` and ``"evolve"`` also count with its per-layer
    costs). ``draw="evolve"`` scores as it draws: it needs ``evaluate`` (a network's proxy
    loss, lower is better) and returns each candidate with its ``proxy_loss``."""
    if draw not in DRAWS:
        raise NasError(f"rank_draw {draw!r}: expected one of {', '.join(DRAWS)}")
    latency = predictor.latency
    if first is None:
        first = derive(space, probs, latency, window, name=name)
    out = [{"spec": first.spec, "predicted_ms": first.latency_ms, "source": "derived"}]
    if draw == "evolve":
        if evaluate is None:
            raise NasError("rank_draw 'evolve' scores while it draws: give evaluate")
        return evolve(space, probs, predictor, window, samples, seed, name, out[0], evaluate)
    seen = {choice_key(first.spec)}
    if draw == "window":
        low, high = window if window is not None else (None, None)
        sampler = WindowSampler(predictor, space, low, high)
        weights = {lb: p.detach().double().cpu().numpy() for lb, p in probs.items()}
        rng = np.random.default_rng(seed * 7_368_787 + 13)
        for _ in range(8):  # likely networks repeat: draw again until enough are distinct
            if len(out) > samples:
                break
            for spec in sampler.draws(rng, samples, name, weights=weights):
                key = choice_key(spec)
                if key not in seen and len(out) <= samples:
                    seen.add(key)
                    out.append({"spec": spec, "predicted_ms": latency(spec),
                                "source": "sampled"})
        return out
    gen = torch.Generator().manual_seed(seed * 7_368_787 + 11)
    for _ in range(samples * 4):  # distinct draws can run out in a small space
        if len(out) > samples:
            break
        blended = {}
        for layer in space.choice_layers():
            p = probs[layer.label].detach().double().cpu()
            i = int(torch.multinomial(p, 1, generator=gen))
            # the draw becomes the argmax; the learned probabilities still order the rest
            blended[layer.label] = 0.5 * p + 0.5 * torch.nn.functional.one_hot(
                torch.tensor(i), len(p)).double()
        # a target drawn across the window: fitted into the whole window, a draw from below
        # would stop at its bottom and every candidate would cost about the same
        sub = window
        if window is not None:
            low, high = window
            sub = (low + float(torch.rand((), generator=gen, dtype=torch.float64)) * (high - low),
                   high)
        d = derive(space, blended, latency, sub, name=name)
        key = choice_key(d.spec)
        inside = window is None or window[0] <= d.latency_ms <= window[1]
        if inside and key not in seen:
            seen.add(key)
            out.append({"spec": d.spec, "predicted_ms": d.latency_ms, "source": "sampled"})
    return out


def evolve(space: SearchSpace, probs: Mapping[str, torch.Tensor], predictor,
           window: tuple[float, float] | None, samples: int, seed: int, name: str, first: dict,
           evaluate: Callable[[ArchSpec], float], *, initial: float = 0.25, parents: int = 4,
           keep: float = 0.9) -> list[dict]:
    """``first`` and ``samples`` distinct networks of the window, each scored by ``evaluate``
    as it is drawn: ``initial`` of them drawn from ``probs`` among the window's networks, the
    rest mutations of one of the ``parents`` best scored so far (chosen uniformly): each layer
    keeps its choice with probability ``keep`` and otherwise takes another candidate in
    proportion to its learned probability, drawn among the window's networks
    (``WindowSampler``), so a mutation needs no repair. In draw order, each with
    ``proxy_loss``; a space too small for enough distinct networks returns fewer."""
    low, high = window if window is not None else (None, None)
    sampler = WindowSampler(predictor, space, low, high)
    learned = {lb: p.detach().double().cpu().numpy() for lb, p in probs.items()}
    rng = np.random.default_rng(seed * 7_368_787 + 17)
    first = {**first, "proxy_loss": evaluate(first["spec"])}
    out, seen = [first], {choice_key(first["spec"])}

    def add(spec: ArchSpec, source: str) -> bool:
        key = choice_key(spec)
        if key in seen:
            return False
        seen.add(key)
        out.append({"spec": spec, "predicted_ms": predictor.latency(spec), "source": source,
                    "proxy_loss": evaluate(spec)})
        return True

    n_initial = max(1, round(initial * samples))
    for _ in range(8):  # likely networks repeat: draw again until enough are distinct
        if len(out) > n_initial:
            break
        for spec in sampler.draws(rng, n_initial, name, weights=learned):
            if len(out) <= n_initial:
                add(spec, "sampled")
    misses = 0
    while len(out) <= samples and misses < 50:
        best = sorted(out, key=lambda c: c["proxy_loss"])[:parents]
        parent = best[int(rng.integers(len(best)))]["spec"]
        try:
            child = sampler.near(parent, rng, keep=keep, name=name, spread=learned)
        except NasError:  # no network of the window this close to the parent
            child = sampler.sample(rng, name, weights=learned)
        misses = 0 if add(child, "mutated") else misses + 1
    return out


def _norm_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def score(supernet, spec: ArchSpec, bn_batches: list[dict], score_batches: list[dict],
          loss_fn: Callable[..., torch.Tensor]) -> float:
    """Mean task loss (``loss_fn(output, batch)``) of ``spec``'s path through ``supernet`` on
    ``score_batches``, after recomputing BatchNorm statistics on ``bn_batches``. The supernet's
    own statistics and mode are restored afterwards."""
    mixes = supernet.fixed_mixes(spec)
    norms = _norm_layers(supernet)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
              m.momentum) for m in norms]
    was_training = supernet.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        supernet.train()
        for batch in bn_batches:
            supernet(batch["image"], mixes)
        supernet.eval()
        total, count = 0.0, 0
        for batch in score_batches:
            n = batch["image"].shape[0]
            total += float(loss_fn(supernet(batch["image"], mixes), batch)) * n
            count += n
        return total / max(count, 1)
    finally:
        for m, (mean, var, tracked, momentum) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
            m.momentum = momentum
        supernet.train(was_training)


def batches(dataset, indices: list[int], batch_size: int, device, epoch: int) -> list[dict]:
    """Collated batches of ``dataset[indices]`` at a fixed augmentation epoch, channels_last."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    return [collate(dataset, indices[start:start + batch_size], device)
            for start in range(0, len(indices), batch_size)]


def rank(searcher, probs: Mapping[str, torch.Tensor], derived: Derivation,
         window: tuple[float, float] | None, name: str) -> list[dict]:
    """Candidates of a finished search (``derived`` and draws from ``probs``), best (lowest
    held-out loss) first, each with its ``proxy_loss`` and ``rank``."""
    cfg = searcher.cfg
    g = torch.Generator().manual_seed(cfg.seed * 104_729 + 5)
    n_bn = min(len(searcher.train_set), cfg.rank_bn_batches * cfg.batch_size)
    bn_idx = torch.randperm(len(searcher.train_set), generator=g)[:n_bn].tolist()
    n_score = min(len(searcher.arch_set), cfg.rank_images)
    score_idx = torch.randperm(len(searcher.arch_set), generator=g)[:n_score].tolist()
    bn_b = batches(searcher.train_set, bn_idx, cfg.batch_size, searcher.device, cfg.epochs)
    score_b = batches(searcher.arch_set, score_idx, cfg.batch_size, searcher.device, cfg.epochs)
    t0 = time.perf_counter()

    def evaluate(spec: ArchSpec) -> float:
        return score(searcher.supernet, spec, bn_b, score_b, searcher.task.loss)

    found = candidates(searcher.space, probs, searcher.predictor, window, cfg.rank_samples,
                       cfg.seed, name, first=derived, draw=cfg.rank_draw, evaluate=evaluate)
    for c in found:
        if "proxy_loss" not in c:
            c["proxy_loss"] = evaluate(c["spec"])
    found.sort(key=lambda c: c["proxy_loss"])
    for i, c in enumerate(found):
        c["rank"] = i + 1
    searcher.rank_seconds = time.perf_counter() - t0
    return found
