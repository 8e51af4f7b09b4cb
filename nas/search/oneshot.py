"""One-shot supernets: train the weights of every path once, then score paths without retraining.

Training (``OneShotTrainer``) uses the search's weight split of the training data (the same
seeded 80/20 split as ``nas search``: the other 20%, the architecture split, stays held out for
scoring) and one of three rules per step:

* ``uniform``: one path drawn uniformly per step (single-path one-shot, SPOS; what the
  differentiable search's weight steps do in path mode);
* ``sandwich``: the largest path, the smallest path and ``random_paths`` uniform paths, their
  gradients summed into one step (BigNAS, Once-for-All's progressive shrinking' successor);
* ``sandwich-kd``: as ``sandwich``, but every path other than the largest learns the largest
  path's heatmaps of the same batch (detached) instead of the ground truth: in-place
  distillation (BigNAS).

Checkpoints at the end of every epoch (``oneshot.pt``, resumable) and a weights-only snapshot at
each epoch of ``snapshots`` (``supernet-e{N}.pt``), so one run gives the supernet at several
training lengths.

Scoring (``PathScorer``): a path's standalone network with the supernet's weights, BatchNorm
statistics recomputed on ``bn_batches`` weight-split batches (cumulative average; the supernet's
own statistics mix every path), then PCK@0.2 and heatmap loss on ``images`` held-out
architecture-split images, unaugmented. The test split is never read here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nas.checks import check_float, check_int
from nas.interrupt import stop_on_sigint
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.space import SearchSpace, get_space
from supernets.spec import ArchSpec
from supernets.supernet import SuperNet

__all__ = ["ONESHOT_FORMAT", "RULES", "EpochSubset", "OneShotConfig", "OneShotTrainer",
           "PathScorer", "load_snapshot", "train_oneshot"]

ONESHOT_FORMAT = "nas.oneshot/1"
RULES = ("uniform", "sandwich", "sandwich-kd")


@dataclass
class OneShotConfig:
    space: str = "efficientpose-a"
    preset: str | None = "lsp"
    data: str | None = None
    rule: str = "uniform"
    epochs: int = 20
    snapshots: tuple[int, ...] = ()      # epochs (1-based) whose weights are kept as well
    batch_size: int = 16                 # the search's weight batch
    lr: float = 1e-3                     # the search's weight optimiser: Adam, constant lr
    weight_decay: float = 1e-4
    arch_split: float = 0.2
    random_paths: int = 2                # sandwich: uniform paths besides largest and smallest
    train_samples: int = 1024            # synthetic data only
    limit: int | None = None             # at most N training images (smoke runs)
    seed: int = 0
    threads: int | None = None
    extra: dict = field(default_factory=dict)
    # a search's own space (its input and joints instead of a preset) and device; left out of
    # ``to_dict`` while unset, so files written before they existed compare equal
    input_size: tuple[int, int] | None = None
    num_joints: int | None = None
    device: str | None = None

    @property
    def task_obj(self):
        """The task of the space's networks (pose, seg)."""
        from nas.tasks import get_task
        return get_task(self.space_obj().skeleton.task)

    def __post_init__(self):
        if self.rule not in RULES:
            raise NasError(f"--rule {self.rule!r}: expected one of {', '.join(RULES)}")
        for name in ("epochs", "batch_size", "train_samples"):
            check_int(name, getattr(self, name))
        check_int("random_paths", self.random_paths, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_int("threads", self.threads, optional=True)
        check_int("limit", self.limit, optional=True)
        check_float("lr", self.lr, positive=True)
        check_float("weight_decay", self.weight_decay, non_negative=True)
        check_float("arch_split", self.arch_split, positive=True, below=1)
        check_int("num_joints", self.num_joints, optional=True)
        if self.input_size is not None:
            self.input_size = tuple(self.input_size)
        self.snapshots = tuple(sorted(set(int(e) for e in self.snapshots)))
        bad = [e for e in self.snapshots if not 1 <= e <= self.epochs]
        if bad:
            raise NasError(f"snapshots {bad}: expected epochs from 1 to {self.epochs}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in _LATER_FIELDS:
            if d[k] is None:
                del d[k]
        return d

    def space_obj(self) -> SearchSpace:
        return get_space(self.space, preset=self.preset, input_size=self.input_size,
                         num_joints=self.num_joints)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or "cpu")


_LATER_FIELDS = ("input_size", "num_joints", "device")


class EpochSubset(torch.utils.data.Dataset):
    """``base[indices]`` that passes ``set_epoch`` (the augmentation's epoch) on to ``base``."""

    def __init__(self, base, indices: list[int]):
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def split_datasets(space: SearchSpace, data: str | None, *, seed: int, arch_split: float,
                   batch_size: int, train_samples: int = 1024, augment: bool = True,
                   limit: int | None = None):
    """The search's split of the training data: ``(dataset, weight part, architecture part)``,
    the parts as index lists into the training split (augmented or not); ``limit``: at most
    that many training images (smoke runs). The reader of the space's task refuses data whose
    outputs do not match the space's (e.g. another joint count)."""
    from nas.tasks import get_task

    full = get_task(space.skeleton.task).make_dataset(data, "train", space.skeleton, seed=seed,
                                       augment=augment, limit=limit if data else train_samples,
                                       synthetic_size=train_samples)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    n_arch = max(batch_size, int(round(len(full) * arch_split)))
    if len(full) - n_arch < batch_size:
        raise NasError(f"--data {data or '(synthetic)'}: {len(full)} samples are too few for "
                       f"batch size {batch_size} and an architecture split")
    return full, order[n_arch:], order[:n_arch]


class OneShotTrainer:
    def __init__(self, cfg: OneShotConfig):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.space = cfg.space_obj()
        self.task = cfg.task_obj
        self.dataset, self.weight_idx, self.arch_idx = split_datasets(
            self.space, cfg.data, seed=cfg.seed, arch_split=cfg.arch_split,
            batch_size=cfg.batch_size, train_samples=cfg.train_samples, limit=cfg.limit)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.supernet = SuperNet(self.space).to(cfg.torch_device,
                                                    memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.supernet.parameters(), lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed * 31 + 7)
        self.layers = self.space.choice_layers()
        self.largest = self.supernet.fixed_mixes(self.space.largest())
        self.smallest = self.supernet.fixed_mixes(self.space.smallest())
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.steps_per_epoch = len(self.weight_idx) // cfg.batch_size
        self._stop = False
        self._losses: list[float] = []
        self._epoch_start = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def request_stop(self) -> None:
        self._stop = True

    def _uniform(self) -> dict:
        return {layer.label: ((int(torch.randint(len(layer.candidates), (), generator=self.gen)),
                               1.0),) for layer in self.layers}

    def paths(self) -> list[dict]:
        """This step's paths, in training order (the largest first under the sandwich rules)."""
        if self.cfg.rule == "uniform":
            return [self._uniform()]
        return [self.largest, self.smallest] + [self._uniform()
                                                for _ in range(self.cfg.random_paths)]

    def _batch(self, k: int) -> dict:
        from nas.search.searcher import collate

        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch * 7919 + 1)
        order = torch.randperm(len(self.weight_idx), generator=g).tolist()
        bs = self.cfg.batch_size
        return collate(self.dataset, [self.weight_idx[order[k * bs + i]] for i in range(bs)],
                       self.cfg.torch_device)

    def train_step(self, batch: dict) -> float:
        self.opt.zero_grad(set_to_none=True)
        teacher, losses = None, []
        for i, mixes in enumerate(self.paths()):
            out = self.supernet(batch["image"], mixes)
            if self.cfg.rule == "sandwich-kd" and teacher is not None:
                loss = self.task.distillation_loss(out, teacher, batch)
            else:
                loss = self.task.loss(out, batch)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise NasError(f"supernet training loss became {value} in epoch "
                               f"{self.epoch + 1}, step {self.step + 1}")
            loss.backward()
            if i == 0:
                teacher = out.detach()
            losses.append(value)
        self.opt.step()
        return losses[0]

    def run(self, out: Path, *, progress: bool = True,
            on_step: Callable[[OneShotTrainer], None] | None = None) -> bool:
        with stop_on_sigint(self.request_stop), tqdm(
                total=self.cfg.epochs * self.steps_per_epoch,
                initial=self.epoch * self.steps_per_epoch + self.step, disable=not progress,
                unit="step", desc=f"supernet ({self.cfg.rule})", dynamic_ncols=True) as bar:
            while not self.finished:
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)
                if self.step == 0:
                    self._losses, self._epoch_start = [], time.perf_counter()
                self.supernet.train()
                while self.step < self.steps_per_epoch:
                    if self._stop:
                        self.save(out)
                        return False
                    self._losses.append(self.train_step(self._batch(self.step)))
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{self._losses[-1]:.2e}",
                                    refresh=False)
                    if on_step:
                        on_step(self)
                self.history.append({"epoch": self.epoch + 1,
                                     "loss": float(np.mean(self._losses)),
                                     "seconds": time.perf_counter() - self._epoch_start})
                self.epoch, self.step = self.epoch + 1, 0
                if self.epoch in self.cfg.snapshots:
                    self.save_snapshot(out)
                self.save(out)
        return True

    # -- files ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": ONESHOT_FORMAT, "config": self.cfg.to_dict(), "epoch": self.epoch,
                "step": self.step, "supernet": self.supernet.state_dict(),
                "optimizer": self.opt.state_dict(), "gen": self.gen.get_state(),
                "history": self.history, "losses": self._losses,
                "epoch_seconds": time.perf_counter() - self._epoch_start if self.step else 0.0}

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["gen"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self._losses = state["history"], state["losses"]
        self._epoch_start = time.perf_counter() - state.get("epoch_seconds", 0.0)

    def save(self, out: Path) -> None:
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        write_atomic(out / "oneshot.pt", buffer.getvalue())
        write_atomic(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def save_snapshot(self, out: Path) -> None:
        buffer = io.BytesIO()
        torch.save({"format": ONESHOT_FORMAT, "config": self.cfg.to_dict(),
                    "epoch": self.epoch, "supernet": self.supernet.state_dict(),
                    "train_seconds": sum(h["seconds"] for h in self.history)}, buffer)
        write_atomic(snapshot_path(out, self.epoch), buffer.getvalue())


def snapshot_path(out: Path, epoch: int) -> Path:
    return Path(out) / f"supernet-e{epoch}.pt"


def _load(path: Path, what: str) -> dict:
    if not path.is_file():
        raise NasError(f"{path}: missing ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises several types for damaged files
        raise NasError(f"{path}: corrupt {what} ({type(e).__name__}); delete it to redo it"
                       ) from None
    if not isinstance(state, dict) or state.get("format") != ONESHOT_FORMAT:
        raise NasError(f"{path}: not a {what} (expected format {ONESHOT_FORMAT!r})")
    return state


def train_oneshot(cfg: OneShotConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Train (or continue: an ``oneshot.pt`` of the same config in ``out``) until ``cfg.epochs``;
    returns ``{"status": "complete" | "interrupted", "history", "snapshots"}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = OneShotTrainer(cfg)
    path = out / "oneshot.pt"
    if path.exists():
        state = _load(path, "supernet checkpoint")
        theirs = {k: v for k, v in json.loads(json.dumps(state["config"])).items()
                  if k != "threads"}
        mine = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k != "threads"}
        theirs["snapshots"] = list(theirs.get("snapshots", []))
        differ = [k for k in mine if k != "snapshots" and theirs.get(k) != mine[k]]
        if differ:
            raise NasError(f"{path}: this supernet was trained with {differ[0]}="
                           f"{theirs.get(differ[0])!r}, not {mine[differ[0]]!r}; choose another "
                           "directory or delete it")
        trainer.load_state_dict(state)
        lost = [e for e in cfg.snapshots
                if e <= trainer.epoch and not snapshot_path(out, e).exists()]
        if lost:
            raise NasError(f"{path}: this supernet is past epoch {lost[0]} and its weights there "
                           f"were not kept (snapshots asked for when it trained: "
                           f"{theirs['snapshots'] or 'none'}); delete {out} to train it again "
                           "with this snapshot")
    complete = trainer.run(out, progress=progress)
    return {"status": "complete" if complete else "interrupted", "epoch": trainer.epoch,
            "history": trainer.history,
            "snapshots": [str(snapshot_path(out, e)) for e in cfg.snapshots
                          if snapshot_path(out, e).exists()]}


def load_snapshot(path: str | Path) -> tuple[SuperNet, OneShotConfig, dict]:
    """A trained supernet from a snapshot (or an ``oneshot.pt`` checkpoint)."""
    state = _load(Path(path), "supernet snapshot")
    cfg = OneShotConfig(**state["config"])
    supernet = SuperNet(cfg.space_obj()).to(cfg.torch_device, memory_format=torch.channels_last)
    try:
        supernet.load_state_dict(state["supernet"])
    except (KeyError, RuntimeError) as e:
        raise NasError(f"{path}: its weights do not fit its own config's space "
                       f"({str(e).splitlines()[0]})") from None
    return supernet, cfg, state


class PathScorer:
    """Scores paths of one trained supernet on held-out training images (see module doc)."""

    def __init__(self, supernet: SuperNet, cfg: OneShotConfig, *, bn_batches: int = 8,
                 images: int = 200, seed: int = 0):
        from nas.search.rank import batches

        self.supernet, self.cfg = supernet, cfg
        space = cfg.space_obj()
        self.task = cfg.task_obj
        augmented, weight_idx, arch_idx = split_datasets(
            space, cfg.data, seed=cfg.seed, arch_split=cfg.arch_split,
            batch_size=cfg.batch_size, train_samples=cfg.train_samples, limit=cfg.limit)
        g = torch.Generator().manual_seed(seed * 104_729 + 5)
        n_bn = min(len(weight_idx), bn_batches * cfg.batch_size)
        bn_idx = [weight_idx[i] for i in torch.randperm(len(weight_idx), generator=g)[:n_bn]]
        self.device = cfg.torch_device
        self.bn = batches(augmented, bn_idx, cfg.batch_size, self.device, 0)
        plain, _, _ = split_datasets(space, cfg.data, seed=cfg.seed, arch_split=cfg.arch_split,
                                     batch_size=cfg.batch_size, train_samples=cfg.train_samples,
                                     augment=False, limit=cfg.limit)
        self.held_out = torch.utils.data.Subset(plain, sorted(arch_idx)[:images])
        self.weight_part = EpochSubset(augmented, weight_idx)
        self.arch_part = EpochSubset(augmented, arch_idx)
        self._ranking_held_out: dict[tuple[int, int], list[dict]] = {}

    @classmethod
    def from_search(cls, state: dict, *, preset: str | None = None, bn_batches: int = 8,
                    images: int = 200) -> PathScorer:
        """A finished differentiable search's final supernet as a scorer on the search's own
        data split; ``state`` is its checkpoint as ``nas.search.searcher.load_checkpoint`` reads
        it, ``preset`` the dataset preset of a search that set no input size of its own."""
        c = state["config"]
        cfg = OneShotConfig(space=c["space"], preset=preset, data=c["data"], rule="uniform",
                            epochs=1, seed=c["seed"], batch_size=c["batch_size"],
                            arch_split=c["arch_split"], train_samples=c["train_samples"],
                            limit=c.get("limit"), input_size=c.get("input_size"),
                            num_joints=c.get("num_joints"), threads=c.get("threads"),
                            device=c.get("device"))
        supernet = SuperNet(cfg.space_obj()).to(cfg.torch_device,
                                                memory_format=torch.channels_last)
        supernet.load_state_dict(state["supernet"])
        return cls(supernet, cfg, bn_batches=bn_batches, images=images)

    @torch.no_grad()
    def model(self, spec: ArchSpec) -> torch.nn.Module:
        """``spec``'s standalone network with the supernet's weights and its own BatchNorm
        statistics."""
        model = self.supernet.standalone(spec).to(self.device, memory_format=torch.channels_last)
        norms = [m for m in model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for batch in self.bn:
            model(batch["image"])
        model.eval()
        return model

    def score(self, spec: ArchSpec) -> dict:
        """``{"metric", "loss", "seconds"}`` of ``spec``'s path on the held-out images (metric:
        the task's, PCK@0.2 for pose, mIoU for seg)."""
        t0 = time.perf_counter()
        result = self.task.evaluate_model(self.model(spec), self.held_out,
                                          batch_size=self.cfg.batch_size * 2, device=self.device)
        return {"metric": result["mean"], "loss": result["loss"],
                "seconds": time.perf_counter() - t0}

    def score_finetuned(self, spec: ArchSpec, steps: int, *, epochs: int, images: int,
                        lr: float = 1e-3, weight_decay: float = 1e-4) -> dict:
        """``{"loss", "steps", "seconds"}``: ``spec``'s held-out loss after ``steps`` steps of
        its own from the supernet's weights, exactly as a search of ``epochs`` epochs that
        ranks on ``images`` held-out images scores its shortlist (``nas.search.rank``: the
        same weight-part batches, the same augmented architecture-part crops)."""
        from nas.search.rank import finetune_loss, ranking_batches

        t0 = time.perf_counter()
        held = self._ranking_held_out.get((epochs, images))
        if held is None:  # read and collated once per scorer, as the search does once
            _, held = ranking_batches(self.weight_part, self.arch_part, seed=self.cfg.seed,
                                      batch_size=self.cfg.batch_size, bn_batches=0,
                                      images=images, epoch=epochs, device=self.device)
            self._ranking_held_out[(epochs, images)] = held
        loss = finetune_loss(self.supernet, spec, self.weight_part, held, self.task.loss,
                             steps=steps, batch_size=self.cfg.batch_size, lr=lr,
                             weight_decay=weight_decay, seed=self.cfg.seed, epoch=epochs + 1,
                             device=self.device)
        return {"loss": loss, "steps": steps, "seconds": time.perf_counter() - t0}
