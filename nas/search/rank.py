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
4. with ``finetune`` steps (``SearchConfig.rank_finetune``; default 60 for segmentation, 0 for
   pose): a shortlist is trained on its own from the supernet's weights for that many steps
   (the weight step's optimiser, batch and augmentation; the same batches for each) and scored
   again on the same held-out images; the shortlist comes first, in that order. The shortlist is
   the best-ranked network of each head family of a segmentation space (``SearchSpace.
   head_families``: transposed-conv stages, LR-ASPP, ASPP-lite; a family the draws left out is
   drawn for, ``family_draws`` networks of the window with the head restricted to it, from the
   learned probabilities otherwise) and then the best-ranked others, ``finetune_top`` in all
   at least. Why: a supernet trained for a few hundred steps ranks heads by how fast they learn,
   and the architecture step then concentrates on the fastest learner, which starves the others
   (with 56 heads each gets about 13 of 720 steps even under uniform draws). On the CamVid proof
   in ``seg-mbv2`` the supernet's held-out loss ranked the networks with LR-ASPP heads among the
   last (Kendall tau -0.14 against test mIoU after retraining, 8 networks), while the loss after
   60 own steps put the three LR-ASPP networks first (0.792, 0.805, 0.808 at 48.0, 46.1, 46.4
   test mIoU; the transposed-conv ones 0.97 to 1.24 at 37.2 to 42.0; tau 0.57:
   results/benchmarks/seg_proof_finetune.md, stage 6).
   Within a family the supernet ranks better than own training does: on the LSP ground truth
   (47 pose networks, one head family) the supernet's held-out loss ranks at Kendall tau 0.665
   and the loss after 60 own steps at -0.08 (results/posebench/proxies_own_training.md), so
   pose leaves the step off and by default (``finetune_top`` 1) the shortlist is one network
   per family;
5. candidates come back best first; the search takes the first and keeps the table in its report
   (in a segmentation space after one more step, ``nas.search.family``: the supernet trains on
   with the head restricted to the family of the shortlist's best, and ranks that family's
   networks again).

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

__all__ = ["DRAWS", "batches", "candidates", "draw_family", "evolve", "family_draws",
           "finetune_loss", "rank", "ranking_batches", "score", "shortlist", "window_sampler"]


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
        sampler = window_sampler(space, predictor, window)
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
    sampler = window_sampler(space, predictor, window)
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


def ranking_batches(train_set, arch_set, *, seed: int, batch_size: int, bn_batches: int,
                    images: int, epoch: int, device) -> tuple[list[dict], list[dict]]:
    """The batches a search's ranking uses, drawn from ``seed``: ``bn_batches`` batches of the
    weight part (``train_set``) to recompute BatchNorm statistics on, and ``images`` held-out
    images of the architecture part (``arch_set``) to score on, both at augmentation ``epoch``
    (the search's epochs)."""
    g = torch.Generator().manual_seed(seed * 104_729 + 5)
    n_bn = min(len(train_set), bn_batches * batch_size)
    bn_idx = torch.randperm(len(train_set), generator=g)[:n_bn].tolist()
    n_score = min(len(arch_set), images)
    score_idx = torch.randperm(len(arch_set), generator=g)[:n_score].tolist()
    return (batches(train_set, bn_idx, batch_size, device, epoch),
            batches(arch_set, score_idx, batch_size, device, epoch))


def rank(searcher, probs: Mapping[str, torch.Tensor], derived: Derivation,
         window: tuple[float, float] | None, name: str) -> list[dict]:
    """Candidates of a finished search (``derived`` and draws from ``probs``), best (lowest
    held-out loss) first, each with its ``proxy_loss`` and ``rank``."""
    cfg = searcher.cfg
    bn_b, score_b = ranking_batches(searcher.train_set, searcher.arch_set, seed=cfg.seed,
                                    batch_size=cfg.batch_size, bn_batches=cfg.rank_bn_batches,
                                    images=cfg.rank_images, epoch=cfg.epochs,
                                    device=searcher.device)
    t0 = time.perf_counter()

    def evaluate(spec: ArchSpec) -> float:
        return score(searcher.supernet, spec, bn_b, score_b, searcher.task.loss)

    found = candidates(searcher.space, probs, searcher.predictor, window, cfg.rank_samples,
                       cfg.seed, name, first=derived, draw=cfg.rank_draw, evaluate=evaluate)
    if cfg.rank_finetune:
        found += family_draws(searcher.space, probs, searcher.predictor, window, found,
                              cfg.seed, name)
    for c in found:
        if "proxy_loss" not in c:
            c["proxy_loss"] = evaluate(c["spec"])
    found.sort(key=lambda c: c["proxy_loss"])
    searcher.rank_seconds = time.perf_counter() - t0
    searcher.finetune_seconds = None
    if cfg.rank_finetune:
        t1 = time.perf_counter()
        short = shortlist(searcher.space, found, cfg.rank_finetune_top)
        for c in short:
            c["finetune_loss"] = finetune_loss(
                searcher.supernet, c["spec"], searcher.train_set, score_b, searcher.task.loss,
                steps=cfg.rank_finetune, batch_size=cfg.batch_size, lr=cfg.weight_lr,
                weight_decay=cfg.weight_decay, seed=cfg.seed, epoch=cfg.epochs + 1,
                device=searcher.device)
        short.sort(key=lambda c: c["finetune_loss"])
        keys = {id(c) for c in short}
        found = short + [c for c in found if id(c) not in keys]
        searcher.finetune_seconds = time.perf_counter() - t1
    for i, c in enumerate(found):
        c["rank"] = i + 1
    return found


def family_draws(space: SearchSpace, probs: Mapping[str, torch.Tensor], predictor,
                 window: tuple[float, float] | None, found: list[dict], seed: int, name: str,
                 per_family: int = 4) -> list[dict]:
    """For each head family of a segmentation space that no candidate of ``found`` has,
    ``per_family`` distinct networks of the window with the head restricted to that family,
    drawn from the learned probabilities otherwise (``WindowSampler``); a family with no
    network in the window is left out. ``[]`` for a pose space."""
    label, families = space.head_families()
    if not families:
        return []
    have = {next(f for f, ops in families.items() if c["spec"].choices[label] in ops)
            for c in found}
    missing = [f for f in families if f not in have]
    if not missing:
        return []
    rng = np.random.default_rng(seed * 7_368_787 + 19)
    seen = {choice_key(c["spec"]) for c in found}
    sampler = window_sampler(space, predictor, window)
    out = []
    for family in missing:
        out += draw_family(sampler, probs, families[family], per_family, rng, seen, name,
                           f"family {family}")
    return out


def window_sampler(space: SearchSpace, predictor,
                   window: tuple[float, float] | None) -> WindowSampler:
    """The ``WindowSampler`` of ``window`` (ms; None: the whole space)."""
    low, high = window if window is not None else (None, None)
    return WindowSampler(predictor, space, low, high)


def draw_family(sampler: WindowSampler, probs: Mapping[str, torch.Tensor],
                heads: tuple[str, ...], n: int, rng: np.random.Generator, seen: set, name: str,
                source: str) -> list[dict]:
    """Up to ``n`` networks of ``sampler``'s window with the head among ``heads`` (uniformly: the
    learned head probabilities are what the family is drawn for, as they barely trained its
    heads), drawn from the learned probabilities otherwise, none whose choices are in ``seen``
    (which they join); ``[]`` when no network of the window has such a head."""
    space, predictor = sampler.space, sampler.predictor
    label, _ = space.head_families()
    learned = {lb: p.detach().double().cpu().numpy() for lb, p in probs.items()}
    names = next(layer for layer in space.choice_layers() if layer.label == label).names
    mask = np.array([1.0 if h in heads else 0.0 for h in names])
    try:
        specs = sampler.draws(rng, n, name, weights={**learned, label: mask})
    except NasError:  # no network of the window has a head of this family
        return []
    out = []
    for spec in specs:
        key = choice_key(spec)
        if key not in seen:
            seen.add(key)
            out.append({"spec": spec, "predicted_ms": predictor.latency(spec), "source": source})
    return out


def shortlist(space: SearchSpace, ranked: list[dict], top: int) -> list[dict]:
    """The candidates ``rank`` trains on their own: the best-ranked (``ranked`` is best first)
    of each head family of a segmentation space, then the best-ranked others up to ``top`` in
    all; in ranking order."""
    label, families = space.head_families()
    picked: list[dict] = []
    if families:
        for ops in families.values():
            best = next((c for c in ranked if c["spec"].choices[label] in ops), None)
            if best is not None:
                picked.append(best)
    keys = {id(c) for c in picked}
    for c in ranked:
        if len(picked) >= top:
            break
        if id(c) not in keys:
            picked.append(c)
            keys.add(id(c))
    order = {id(c): i for i, c in enumerate(ranked)}
    return sorted(picked, key=lambda c: order[id(c)])


def finetune_loss(supernet, spec: ArchSpec, train_set, score_batches: list[dict],
                  loss_fn: Callable[..., torch.Tensor], *, steps: int, batch_size: int,
                  lr: float, weight_decay: float, seed: int, epoch: int, device) -> float:
    """Mean task loss on ``score_batches`` of ``spec``'s network after ``steps`` training steps
    on its own from ``supernet``'s weights (a copy: the supernet is not changed): Adam at the
    search's weight lr and decay, batches of ``train_set`` (augmented) in an order drawn from
    ``seed``, the same for every network."""
    model = supernet.standalone(spec).to(device, memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed * 104_729 + 23)
    n = len(train_set)
    order: list[int] = []
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(n, generator=g).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate(train_set, idx, device)
        loss = loss_fn(model(batch["image"]), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in score_batches:
            k = batch["image"].shape[0]
            total += float(loss_fn(model(batch["image"]), batch)) * k
            count += k
    return total / max(count, 1)
