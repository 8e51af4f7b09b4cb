"""Training an architecture from scratch, with per-epoch validation, checkpoints and resume.

The recipe is EfficientPose's (no pretraining): Adam, lr 1e-3, weight decay 1e-4, lr x0.1 at
75% and 85% of the epochs (150 and 170 of 200), scaled to the epoch count; the augmentation of
the readers (scale +-25%, rotation +-30 deg, flip), Gaussian targets with sigma 2.

A run directory holds::

    last.pt        nas.model/1 checkpoint after the latest epoch (meta: epoch, metrics)
    best.pt        the epoch with the best validation metric so far
    resume.pt      optimiser state, epoch and step, history: what --resume needs (nas.train/1)
    log.jsonl      one line per epoch: lr, training loss, training seconds, and the validation
                   metric and its seconds after a validated epoch (``val_every``)
    metrics.json   written at the end: the last model's validation metric, with and without
                   flip test, per joint; the best epoch

Validation uses each dataset's metric (``nas.tasks.pose.evaluation``): PCK@0.2 for LSP and the
synthetic figures, PCKh@0.5 for MPII, OKS AP for COCO.

Determinism: weights are initialised under ``seed``; the order of epoch e is a permutation drawn
from (seed, e) and augmentation from (seed, e, sample), so a run interrupted (Ctrl-C writes
``resume.pt`` at the next step) and resumed ends, on the CPU, with the same weights as one that
was never interrupted. On the CPU the model and its inputs are kept channels_last: in NCHW the
backward pass of depthwise convolutions takes a slow path (seconds per step).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from nas.checkpoint import layers_difference, save_model_checkpoint
from nas.checks import check_float, check_int
from nas.distributed import World, from_env, resumed_step
from nas.interrupt import stop_on_sigint
from nas.tasks import TASKS, get_task
from supernets.errors import NasError
from supernets.fileio import check_writable_dir, clear_run_files, refuse_used_out, write_atomic
from supernets.model import PoseNet
from supernets.spec import ArchSpec

__all__ = ["RECIPES", "RESUME_FORMAT", "TASKS", "TrainConfig", "Trainer", "TrainingDiverged",
           "learning_rate", "recipe", "train"]

RESUME_FORMAT = "nas.train/1"
RUN_FILES = ("resume.pt", "last.pt", "best.pt", "log.jsonl", "metrics.json")  # what a run writes


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in ``resume.pt`` and ``metrics.json``."""

    arch: dict                      # the nas.arch/1 object trained (input/joint overrides applied)
    task: str = "pose"
    data: str | None = None         # None: the embedded synthetic figures
    val_data: str | None = None     # None: the validation split of ``data``
    detections: str | None = None   # COCO person boxes for validation (None: ground truth)
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    decay_at: tuple[float, ...] = (0.75, 0.85)   # fractions of the epochs
    decay_factor: float = 0.1
    sigma: float = 2.0
    seed: int = 0
    limit: int | None = None        # at most this many training (and validation) images
    synthetic_train: int = 2000     # synthetic figures per split when ``data`` is None
    synthetic_val: int = 500
    workers: int = 2
    device: str = "cpu"
    threads: int | None = None      # CPU threads (None: torch's default)
    val_every: int = 1              # validate every N epochs (0: only the final evaluation)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        get_task(self.task)   # a one-line error for a task that cannot train
        for name in ("epochs", "batch_size", "synthetic_train", "synthetic_val"):
            check_int(name, getattr(self, name))
        for name in ("limit", "threads"):
            check_int(name, getattr(self, name), optional=True)
        for name in ("workers", "seed", "val_every"):
            check_int(name, getattr(self, name), minimum=0)
        # sigma 0 divides by zero in the Gaussian targets (NaN peaks, numpy warnings)
        for name in ("lr", "sigma", "decay_factor"):
            check_float(name, getattr(self, name), positive=True)
        check_float("weight_decay", self.weight_decay, non_negative=True)
        self.decay_at = tuple(self.decay_at)
        arch_task = self.arch.get("task", "pose") if isinstance(self.arch, dict) else "pose"
        if arch_task != self.task:
            raise NasError(f"--task {self.task}: arch {self.arch.get('name')!r} is a "
                           f"{arch_task} network (use --task {arch_task})")

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec.from_dict(self.arch, where="arch")

    def milestones(self) -> list[int]:
        """Epochs (0-based) from which the lr is multiplied by ``decay_factor`` once more."""
        return [round(f * self.epochs) for f in self.decay_at]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Named recipes: TrainConfig settings that differ from the defaults (EfficientPose's, scaled to
# ``epochs``). ``posebench`` is the short recipe of the pose ground truth (benchmarks/posebench.py):
# the proof's recipe for 12 epochs, evaluated once at the end.
RECIPES: dict[str, dict] = {
    "efficientpose": {},
    "proof": {"epochs": 30},
    "posebench": {"epochs": 12, "val_every": 0},
}


def recipe(name: str) -> dict:
    """The settings of a named recipe (a copy); a one-line error names the known ones."""
    if name not in RECIPES:
        raise NasError(f"--recipe {name!r}: expected one of {', '.join(sorted(RECIPES))}")
    return dict(RECIPES[name])


class TrainingDiverged(NasError):
    """The training loss became NaN or infinite: the run cannot go on from here."""


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The step schedule: ``lr`` x ``decay_factor`` per milestone reached by ``epoch``."""
    return cfg.lr * cfg.decay_factor ** sum(epoch >= m for m in cfg.milestones())


class Trainer:
    """One training run: model, optimiser, data and the position in the schedule."""

    def __init__(self, cfg: TrainConfig, world: World | None = None):
        self.cfg = cfg
        self.world = world or World()
        self.spec = cfg.spec
        sk = self.spec.skeleton
        self.task = get_task(cfg.task)
        self.train_set = self.task.make_dataset(
            cfg.data, "train", sk, seed=cfg.seed, augment=True, limit=cfg.limit,
            synthetic_size=cfg.synthetic_train, **self.task.reader_options(cfg))
        val_data = cfg.val_data if cfg.val_data is not None else cfg.data
        if cfg.val_data is None and cfg.data is not None and Path(cfg.data).is_file():
            print(f"nas: --data {cfg.data} is a single annotation file: validating on the "
                  "training data itself (give --val-data for a held-out file)", file=sys.stderr)
        self.val_set = self.task.make_dataset(
            val_data, self.task.validation_split(val_data), sk, seed=cfg.seed, augment=False,
            limit=cfg.limit, synthetic_size=cfg.synthetic_val,
            **self.task.reader_options(cfg, validation=True))
        self.device = torch.device(self.world.device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)   # the initial weights, and nothing else, come from here
            model = PoseNet(self.spec)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        # several processes: gradients averaged across ranks at every step (nas.distributed)
        self.net = self.model if not self.world.enabled else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        # DistributedSampler gives each rank ceil(n / processes) samples (padded)
        per_rank = math.ceil(len(self.train_set) / self.world.size)
        self.steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
        self._stop = False
        self._loss_sum, self._epoch_start = 0.0, time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def request_stop(self) -> None:
        """Stop at the next step boundary, after writing the checkpoints."""
        self._stop = True

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.train_set), generator=g).tolist()

    def _batches(self):
        """The batches of the current epoch from ``self.step`` on (resume skips the rest); with
        several processes this rank's share (``DistributedSampler``, seeded as the run)."""
        self.train_set.set_epoch(self.epoch)
        if self.world.enabled:
            sampler = DistributedSampler(self.train_set, num_replicas=self.world.size,
                                         rank=self.world.rank, shuffle=True, seed=self.cfg.seed)
            sampler.set_epoch(self.epoch)
            order = list(sampler)
        else:
            order = self._order()
        order = order[self.step * self.cfg.batch_size:]
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=order,
                          num_workers=self.cfg.workers)

    def _train_step(self, batch: dict) -> float:
        images = batch["image"].to(self.device).contiguous(memory_format=torch.channels_last)
        batch = {k: batch[k].to(self.device) for k in self.task.target_keys}
        loss = self.task.loss(self.net(images), batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            lr = self.optimizer.param_groups[0]["lr"]
            raise TrainingDiverged(f"training loss became {value} in epoch {self.epoch + 1}, "
                                   f"step {self.step + 1} (lr {lr:g})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value

    def validate(self, *, flip: bool = False, progress: bool = False) -> dict:
        return self.task.evaluate_model(self.model, self.val_set, flip=flip,
                                        device=self.device, batch_size=self.cfg.batch_size,
                                        num_workers=self.cfg.workers, progress=progress)

    def run(self, out: Path, *, progress: bool = True,
            on_step: Callable[[Trainer], None] | None = None) -> bool:
        """Train until the last epoch or a stop request; True when training is complete."""
        progress = progress and self.world.is_main
        with stop_on_sigint(self.request_stop), tqdm(
                total=self.cfg.epochs * self.steps_per_epoch,
                initial=self.epoch * self.steps_per_epoch + self.step, disable=not progress,
                unit="step", desc="train", dynamic_ncols=True) as bar:
            while not self.finished:
                lr = learning_rate(self.cfg, self.epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                if self.step == 0:
                    self._loss_sum, self._epoch_start = 0.0, time.perf_counter()
                self.model.train()
                for batch in self._batches():
                    if self.world.any(self._stop):   # every rank stops at the same step
                        self.save(out)
                        return False
                    loss = self._train_step(batch)
                    self._loss_sum += loss
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.2e}", lr=f"{lr:.0e}",
                                    refresh=False)
                    if on_step:
                        on_step(self)
                self._end_epoch(lr)
                self.save(out)
                if self.world.any(self._stop) and not self.finished:
                    return False
        return True

    def _validates(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` ends with a validation (``val_every``; 0: never)."""
        every = self.cfg.val_every
        return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs)

    def _end_epoch(self, lr: float) -> None:
        seconds = time.perf_counter() - self._epoch_start   # training only, not validation
        entry = {"epoch": self.epoch + 1, "lr": lr,
                 "train_loss": self.world.mean(self._loss_sum / max(self.step, 1)),
                 "seconds": seconds, "processes": self.world.size}
        t0 = time.perf_counter()
        val = None
        if self._validates(self.epoch):   # rank 0 validates, the others take its result
            val = self.world.broadcast(self.validate() if self.world.is_main else None)
        if val is not None:
            entry.update(val_metric=val["metric"], val=val["mean"], val_loss=val["loss"],
                         val_seconds=time.perf_counter() - t0)
        self.history.append(entry)
        if self.world.is_main:
            tqdm.write(f"epoch {entry['epoch']}/{self.cfg.epochs}: loss "
                       f"{entry['train_loss']:.3e}"
                       + (f", val {val['metric']} {val['mean']:.2f}" if val else ""),
                       file=sys.stderr)
        self.epoch, self.step = self.epoch + 1, 0
        if val is None:
            self._improved = False
            return
        if self.best is None or _better(val["mean"], self.best["val"]):
            self.best = {"epoch": self.epoch, "val": val["mean"], "metric": val["metric"]}
            self._improved = True
        else:
            self._improved = False

    # -- files ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": RESUME_FORMAT, "config": self.cfg.to_dict(), "epoch": self.epoch,
                "step": self.step, "processes": self.world.size, "loss_sum": self._loss_sum,
                "epoch_seconds": (time.perf_counter() - self._epoch_start) if self.step else 0.0,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "history": self.history,
                "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.step = resumed_step(self.step, state.get("processes", 1), self.world.size,
                                 self.steps_per_epoch)
        self._loss_sum = state["loss_sum"]
        # an epoch stopped half-way goes on counting the time it had already taken
        self._epoch_start = time.perf_counter() - state.get("epoch_seconds", 0.0)
        self.history, self.best = state["history"], state["best"]

    def save(self, out: Path) -> None:
        """``resume.pt``, ``last.pt`` (and ``best.pt`` after an improving epoch), ``log.jsonl``;
        written by rank 0 alone."""
        if not self.world.is_main:
            return
        meta = {"epoch": self.epoch, "step": self.step, "complete": self.finished,
                "metrics": self.history[-1] if self.history else None,
                "data": self.cfg.data, "seed": self.cfg.seed, "task": self.cfg.task}
        save_model_checkpoint(out / "last.pt", self.spec, self.model, **meta)
        if self.step == 0 and getattr(self, "_improved", False):
            save_model_checkpoint(out / "best.pt", self.spec, self.model, **meta)
            self._improved = False
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        write_atomic(out / "resume.pt", buffer.getvalue())
        write_atomic(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))


def _better(a: float, b: float) -> bool:
    return not math.isnan(a) and (math.isnan(b) or a > b)


def _load_resume(out: Path) -> dict:
    path = out / "resume.pt"
    if not path.is_file():
        raise NasError(f"{path}: no training run to resume here (expected resume.pt written by "
                       "nas train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises several types for damaged files
        raise NasError(f"{path}: corrupt resume file ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise NasError(f"{path}: not a training resume file (expected format "
                       f"{RESUME_FORMAT!r})")
    return state


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False,
          epochs: int | None = None, arch: ArchSpec | None = None, workers: int | None = None,
          progress: bool = True, force: bool = False,
          on_step: Callable[[Trainer], None] | None = None) -> dict:
    """Train into ``out``, or resume the run there (its config; ``epochs`` may extend it,
    ``arch`` must match it). A new run refuses an ``out`` holding another run's files unless
    ``force``, which deletes them (``RUN_FILES`` only) once every input has been checked.
    Every input is checked before anything is written. Returns the final report, or
    ``{"status": "interrupted", ...}``."""
    out = Path(out)
    state = None
    if resume:
        state = _load_resume(out)
        try:
            cfg = TrainConfig(**state["config"])
        except TypeError as e:
            raise NasError(f"{out / 'resume.pt'}: config does not match this version ({e})"
                           ) from None
        if arch is not None:
            difference = layers_difference(arch, cfg.spec)
            if difference:
                raise NasError(f"{out}: this run trains {cfg.spec.name!r}, not {arch.name!r}: "
                               f"{difference}")
        if epochs is not None:
            cfg.epochs = max(cfg.epochs, epochs)
        if workers is not None:
            cfg.workers = workers
    else:
        refuse_used_out(out, RUN_FILES, "training run", force)
    check_writable_dir(out, "--resume" if resume else "--out")  # before loading any data
    # every rank has checked the inputs before the first collective (DDP's broadcast of the
    # weights in Trainer), so rank 0's first write cannot be taken for another run's files
    trainer = Trainer(cfg, from_env(cfg.device))
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as e:
            raise NasError(f"{out / 'resume.pt'}: does not match this run ({e})") from None
    elif force and trainer.world.is_main:
        clear_run_files(out, RUN_FILES)
    out.mkdir(parents=True, exist_ok=True)
    if not trainer.run(out, progress=progress, on_step=on_step):
        return {"status": "interrupted", "out": str(out), "epoch": trainer.epoch,
                "step": trainer.step, "resume": f"nas train --resume {out}"}
    return _finish(trainer, out, progress)


def _finish(trainer: Trainer, out: Path, progress: bool) -> dict:
    """The final evaluation and ``metrics.json``, by rank 0; the other ranks get its report."""
    world = trainer.world
    report = _final_report(trainer, out, progress) if world.is_main else None
    return world.broadcast(report)


def _final_report(trainer: Trainer, out: Path, progress: bool) -> dict:
    cfg = trainer.cfg
    final = trainer.validate(progress=progress)
    final_flip = trainer.validate(flip=True, progress=progress)
    report = {
        "status": "complete",
        "task": cfg.task,
        "arch": trainer.spec.name,
        "out": str(out),
        "data": cfg.data or "synthetic",
        "val_data": cfg.val_data or cfg.data or "synthetic",
        "epochs": cfg.epochs,
        "processes": trainer.world.size,
        "batch_size_per_rank": cfg.batch_size,
        "global_batch_size": cfg.batch_size * trainer.world.size,
        "metric": final["metric"],
        "final": final,
        "final_flip": final_flip,
        "best": trainer.best,
        "history": trainer.history,
        "checkpoints": {"last": str(out / "last.pt"),
                        "best": str(out / "best.pt") if trainer.best else None},
        "config": cfg.to_dict(),
    }
    write_atomic(out / "metrics.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
