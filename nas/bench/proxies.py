"""Proxy fidelity: how well scores computed without retraining rank the pose ground truth.

Every proxy is scored against ``results/posebench`` (``nas.bench.posebench``): Kendall tau-b,
Spearman and the top-10% overlap between the proxy and the short recipe's PCK@0.2 on the test
split, over the networks of the space that the table has finished (all drawn inside the proof's
latency window; mobilenetv2 is not a network of the space, so no supernet can score it, and it
is left out of every proxy so that all are compared on the same networks). Proxies, each
oriented so that higher means "predicted more accurate":

* table columns: ``params``, ``macs``, ``predicted_ms`` (the proof's table), ``latency_ms``
  (measured side by side, when the table has it): bigger networks as better networks;
* zero-cost proxies at initialisation (``nas.bench.zerocost``), on 32 unaugmented images of the
  search's architecture split (held-out *training* images), mean over ``seeds`` initialisations;
* supernets (``nas.search.oneshot``): trained on the search's weight split with one rule, at
  several training lengths (snapshots of one run); each network's path with BatchNorm statistics
  recomputed, scored by PCK@0.2 and by -heatmap loss on held-out architecture-split images.

The test split is never read here: the ground truth comes from the committed table.
Every score is cached per network (``<cache>/*.json``), so a run killed half-way continues.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nas.bench.posebench import read_json, write_json
from nas.bench.stats import rank_agreement
from supernets.errors import NasError
from supernets.spec import ArchSpec

__all__ = ["TABLE_PROXIES", "fidelity", "ground_truth", "supernet_scores", "zerocost_scores"]

TABLE_PROXIES = {"params": "params", "macs": "macs", "predicted_ms": "predicted_ms_proof_table",
                 "latency_ms": "latency_ms"}


def ground_truth(table_dir: Path, space: str) -> tuple[list[dict], dict]:
    """The table's finished networks of ``space`` (rows with ``spec``), and its summary."""
    from nas.bench.posebench import load_table

    df = load_table(table_dir)
    summary = read_json(Path(table_dir) / "summary.json", "the posebench summary")
    rows = []
    for r in df.to_dict("records"):
        if r["status"] != "complete":
            continue
        spec = ArchSpec.from_dict(json.loads(r["arch"]), where=f"{table_dir} {r['key']}")
        if spec.space != space:
            continue
        rows.append({**r, "spec": spec})
    if not rows:
        raise NasError(f"{table_dir}: no finished network of {space} in the posebench table yet")
    return rows, summary


def _cache(path: Path, header: dict) -> dict:
    """A score cache (``{**header, "networks": {key: ...}}``); one made with another header
    (other images, seeds, supernet) is refused rather than mixed."""
    if path.exists():
        cache = read_json(path, "a proxy score cache")
        for k, v in header.items():
            if json.loads(json.dumps(cache.get(k))) != json.loads(json.dumps(v)):
                raise NasError(f"{path}: made with {k}={cache.get(k)!r}, not {v!r}; delete it "
                               "to score again")
        return cache
    return {**header, "networks": {}}


def held_out_images(data: str, space, count: int = 32, limit: int | None = None):
    """``count`` unaugmented images of the search's architecture split (training images)."""
    import torch

    from nas.search.oneshot import split_datasets

    plain, _, arch_idx = split_datasets(space, data, seed=0, arch_split=0.2, batch_size=16,
                                        augment=False, limit=limit)
    images = [plain[i]["image"] for i in sorted(arch_idx)[:count]]
    return torch.stack(images).contiguous(memory_format=torch.channels_last)


def zerocost_scores(rows: list[dict], data: str, cache_path: Path, *, seeds: tuple[int, ...],
                    limit: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Zero-cost proxies of every row's network, cached per network."""
    from nas.bench.zerocost import score_all
    from supernets.model import PoseNet
    from supernets.space import get_space

    space = get_space(rows[0]["spec"].space, preset="lsp")
    header = {"what": "zero-cost proxies at initialisation", "seeds": list(seeds),
              "images": "32 unaugmented images of the search's architecture split "
                        "(seed 0, 20% of LSP's training split)", "data": data, "limit": limit}
    cache = _cache(cache_path, header)
    todo = [r for r in rows if r["key"] not in cache["networks"]]
    if todo:
        log(f"zero-cost proxies: {len(todo)} network(s) to score")
        images = held_out_images(data, space, limit=limit)
    for i, r in enumerate(todo):
        spec = r["spec"]
        cache["networks"][r["key"]] = score_all(lambda s=spec: PoseNet(s), images, seeds=seeds)
        write_json(cache_path, cache)
        if (i + 1) % 10 == 0:
            log(f"zero-cost proxies: {i + 1} of {len(todo)}")
    return cache


def supernet_scores(rows: list[dict], data: str, rule: str, *, epochs: int,
                    snapshots: tuple[int, ...], workdir: Path, cache_dir: Path,
                    bn_batches: int, images: int, threads: int | None, progress: bool,
                    limit: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Train (or continue) one supernet with ``rule`` and score every row at each snapshot:
    ``{epoch: cache}``; ``{}`` when the training was interrupted."""
    import torch

    from nas.search.oneshot import (
        OneShotConfig,
        PathScorer,
        load_snapshot,
        snapshot_path,
        train_oneshot,
    )

    space = rows[0]["spec"].space
    cfg = OneShotConfig(space=space, preset="lsp", data=data, rule=rule, epochs=epochs,
                        snapshots=snapshots, threads=threads, limit=limit)
    run = workdir / rule
    missing = [e for e in snapshots if not snapshot_path(run, e).exists()]
    if missing:
        log(f"supernet {rule}: training to epoch {epochs} in {run} (snapshots "
            f"{', '.join(map(str, snapshots))})")
        result = train_oneshot(cfg, run, progress=progress)
        if result["status"] != "complete":
            return {}
    elif threads:
        torch.set_num_threads(threads)
    out = {}
    for epoch in snapshots:
        supernet, scfg, state = load_snapshot(snapshot_path(run, epoch))
        header = {"what": "supernet path scores on held-out training images", "rule": rule,
                  "epoch": epoch, "config": json.loads(json.dumps(scfg.to_dict())),
                  "bn_batches": bn_batches, "images": images}
        out[epoch] = _score_rows(
            rows, cache_dir / f"supernet-{rule}-e{epoch}.json", header, state,
            lambda: PathScorer(supernet, scfg, bn_batches=bn_batches, images=images),
            lambda scorer, spec: scorer.score(spec),
            f"supernet {rule} epoch {epoch}: scoring", log)
    return out


def _score_rows(rows: list[dict], path: Path, header: dict, state: dict,
                make_scorer: Callable, score: Callable, what: str,
                log: Callable[[str], None]) -> dict:
    """The cache at ``path`` (``header``) with every row scored: the rows not in it yet by
    ``score(scorer, spec)`` with one scorer made for them, the cache written after each."""
    cache = _cache(path, header)
    cache["train_seconds"] = state.get("train_seconds")
    todo = [r for r in rows if r["key"] not in cache["networks"]]
    if todo:
        log(f"{what} {len(todo)} network(s)")
        scorer = make_scorer()
        for r in todo:
            cache["networks"][r["key"]] = score(scorer, r["spec"])
            write_json(path, cache)
    write_json(path, cache)
    return cache


def finetune_scores(rows: list[dict], rule: str, epoch: int, steps: int, *, workdir: Path,
                    cache_dir: Path, bn_batches: int, images: int, threads: int | None,
                    log: Callable[[str], None] = print) -> dict:
    """Every row's held-out loss after ``steps`` steps of its own from the ``rule`` supernet's
    epoch-``epoch`` snapshot (trained by ``supernet_scores``), as a search's shortlist is scored
    (``PathScorer.score_finetuned``): the cache, ``{}`` when that snapshot is missing."""
    import torch

    from nas.search.oneshot import PathScorer, load_snapshot, snapshot_path

    path = snapshot_path(workdir / rule, epoch)
    if not path.exists():
        log(f"own-training scores: no supernet {rule} epoch {epoch} in {workdir / rule}")
        return {}
    if threads:
        torch.set_num_threads(threads)
    supernet, scfg, state = load_snapshot(path)
    header = {"what": "held-out loss after own training from the supernet's weights",
              "rule": rule, "epoch": epoch, "steps": steps,
              "config": json.loads(json.dumps(scfg.to_dict())), "bn_batches": bn_batches,
              "images": images}
    return _score_rows(
        rows, cache_dir / f"supernet-{rule}-e{epoch}-own{steps}.json", header, state,
        lambda: PathScorer(supernet, scfg, bn_batches=bn_batches, images=images),
        lambda scorer, spec: scorer.score_finetuned(spec, steps, epochs=epoch, images=images),
        f"supernet {rule} epoch {epoch}: {steps} own steps for", log)


def fidelity(rows: list[dict], scores: dict[str, dict[str, float]],
             costs: dict[str, str]) -> list[dict]:
    """One line per proxy: agreement with the ground truth's PCK over the rows it scored."""
    truth = {r["key"]: r["pck"] for r in rows}
    out = []
    for name, by_key in scores.items():
        keys = [k for k in truth if k in by_key and by_key[k] is not None]
        values = [float(by_key[k]) for k in keys]
        values = [v if math.isfinite(v) else math.nan for v in values]
        agreement = rank_agreement([truth[k] for k in keys], values)
        out.append({"proxy": name, **agreement, "cost": costs.get(name, "")})
    return out


def zerocost_columns(cache: dict) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """``({proxy: {key: value}}, {proxy: mean seconds per network})``."""
    scores: dict[str, dict[str, float]] = {}
    seconds: dict[str, list[float]] = {}
    for key, per in cache["networks"].items():
        for name, v in per.items():
            scores.setdefault(name, {})[key] = v["value"]
            seconds.setdefault(name, []).append(v["seconds"] * len(v["values"]))
    return scores, {k: float(np.mean(v)) for k, v in seconds.items()}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
