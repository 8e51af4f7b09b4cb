"""The differentiable search loop: alternating weight and architecture steps, budget targeting.

Loss for the architecture step: ``task / running mean(task) + lam * log(E[latency_ms]) / log(tau)``
where ``E[latency_ms]`` is the latency table's calibrated expected latency under the current
choice probabilities (``lut.LatencyPredictor.expected_latency``), differentiable in ``alpha``.
The task term is divided by its running mean (in reinforce mode: each path's advantage), so both
terms are relative changes and lambda is in units of relative loss: a heatmap MSE of ~5e-3 with
gradients ~1e-5 would otherwise be swamped by the cost term and Adam, which removes scale, would
follow the sign of the cost gradient alone.

Budget targeting (why the result lands on the budget rather than collapsing to the smallest ops,
DenseNAS issue #18, or to parameter-free skips, DARTS's known failure). With ``lam_control =
"expected"`` (default), lambda is ``lam_gain`` x how far the *expected* latency ``E`` lies outside
the window ``[0.87, 0.97] x budget`` (positive above, negative below, zero inside): a hinge,
smooth in ``alpha``, with no integrator to wind up, so inside the window the task term alone
moves ``alpha``. With ``"argmax"``, lambda is a dual variable stepped after every architecture
step by the predicted latency ``L`` of the most probable architecture::

    lam += lam_step * (L/B - 0.97)   while L/B > 0.97
    lam += lam_step * (L/B - 0.87)   while L/B < 0.87

which jumps as the argmax changes and was seen to cycle (12 sign changes in the LSP proof).
Derivation (``nas.search.derive``) then fits the most probable architecture into the window,
and, with ``rank_samples`` (default 48), that network and draws from the learned probabilities
are ranked by the supernet's held-out loss (``nas.search.rank``).

The default mode, ``reinforce``, was chosen on the pose ground truth
(``results/benchmarks/search_quality.md``): its architecture steps score single paths, as the
weights are trained (``nas.search.relax``). Weights and ``alpha`` are trained on two disjoint
splits of the training data (80/20 by default), after ``warmup_epochs`` of weight-only steps.
Weight steps always draw paths uniformly in the path and reinforce modes (as single-path one-shot
methods do), so every candidate keeps being trained and the ones the architecture step currently
favours do not win by having had more training.

Interruption: a checkpoint is written at the end of every epoch and, on Ctrl-C, at the next step
boundary (a second Ctrl-C aborts at once). Every random draw comes from generators whose state is
in the checkpoint and the data order is a function of (seed, epoch), so a resumed run on the CPU
ends with the same architecture as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler, default_collate
from tqdm import tqdm

from nas.checks import check_float, check_int
from nas.distributed import World, resumed_step
from nas.interrupt import stop_on_sigint
from nas.search.relax import MODES, ArchParameters
from nas.tasks import get_task
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.space import SearchSpace
from supernets.supernet import SuperNet

__all__ = ["CHECKPOINT_FORMAT", "SearchConfig", "Searcher", "collate"]

CHECKPOINT_FORMAT = "nas.search/1"


def collate(dataset, indices: list[int], device) -> dict:
    """One batch of ``dataset[indices]`` on ``device``, images channels_last."""
    batch = {key: v.to(device) if torch.is_tensor(v) else v
             for key, v in default_collate([dataset[i] for i in indices]).items()}
    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


DEFAULT_SPACES = {"pose": "cpu-base", "seg": "seg-small"}   # a search's space per task


def default_arch_lr(mode: str) -> float:
    """The architecture Adam lr of ``mode``: a score-function step (reinforce) is noisier and
    smaller than a relaxed one's."""
    return 0.05 if mode == "reinforce" else 1e-2


@dataclass
class SearchConfig:
    """Every setting of a search; saved in its checkpoint and report."""

    budget_ms: float
    task: str = "pose"
    space: str = "cpu-base"
    input_size: tuple[int, int] | None = None
    num_joints: int | None = None       # default: the space's
    data: str | None = None
    # default: the task's (Task.search_epochs), half of them warm-up. Pose: 10; on the pose
    # ground truth the default's pick sat at the 85th percentile of its window for each of 3
    # seeds at 10 epochs, 74th on average at 40 (results/benchmarks/search_quality.md): a
    # supernet trained longer ranks worse. Seg: enough epochs for 720 weight steps, at least 10
    # (40 on CamVid): a CamVid supernet's ranking still moves before that
    # (nas.tasks.seg.task.SEARCH_WEIGHT_STEPS)
    epochs: int | None = None
    warmup_epochs: int | None = None    # default: half of the epochs (FNA, DenseNAS)
    batch_size: int = 16
    # architecture steps on half batches by default: a path-mode architecture step runs two
    # candidates per layer, so at the full batch it costs and holds twice a weight step
    arch_batch_size: int | None = None
    train_samples: int = 1024           # synthetic data: images generated for the search
    arch_split: float = 0.2             # share of the training data for architecture steps
    # how alpha learns (nas.search.relax): "reinforce" (default: single paths drawn from the
    # probabilities, scored as the weights were trained), "path", "softmax" or "gumbel". Chosen
    # on the ground truth (results/benchmarks/search_quality.md)
    mode: str = "reinforce"
    arch_samples: int = 4               # reinforce: single paths per architecture step
    # how lambda is steered: "argmax" (a dual variable stepped after every architecture step by
    # the most probable network's latency) or "expected" (proportional to how far E[latency]
    # lies outside the window, zero inside it: a hinge, so inside the window the task term
    # alone moves alpha, and no integrator to wind up and cycle)
    lam_control: str = "expected"
    lam_gain: float = 20.0              # expected: lambda per unit of (E[latency]/budget) outside
    drop_path: float = 0.0              # softmax/gumbel weight steps
    lam: float = 0.1                    # initial weight of the cost term (adapted, may go negative)
    lam_step: float = 0.05              # dual step per architecture step, per unit of L/B error
    tau: float = 15.0                   # log base of the cost term; cost in ms (DenseNAS: 15)
    # derived predicted latency / budget: inside the promised [0.85, 1.0], with room at the top
    # for the table's prediction error and measurement noise
    window: tuple[float, float] = (0.87, 0.97)
    weight_lr: float = 1e-3             # Adam (EfficientPose training setup)
    weight_decay: float = 1e-4
    # Adam with betas (0.5, 0.999) as FNA/DenseNAS. Their lr 3e-4 is for thousands of steps (a
    # CPU-scale search has a few hundred), and their weight decay 1e-3 would swamp heatmap-MSE
    # gradients (~1e-5): the alphas would stay at zero.
    arch_lr: float | None = None        # default: 0.05 in reinforce mode, 1e-2 in the others
    arch_weight_decay: float = 0.0
    # after the search: the derived network and rank_samples more drawn from the learned
    # probabilities, ranked by the supernet's held-out loss (nas.search.rank), the proxy that
    # ranks standalone networks best (results/posebench/proxies.md); 0: derivation alone
    rank_samples: int = 48
    # how they are drawn (nas.search.rank): "window", from the learned probabilities among the
    # window's networks; "fit", each draw fitted into the window by derivation (before);
    # "evolve", a quarter so drawn, the rest mutations of the best scored so far
    rank_draw: str = "window"
    # then a shortlist (the best-ranked network of each segmentation head family, then the best
    # others up to rank_finetune_top) trains rank_finetune steps on its own from the supernet's
    # weights and goes first in the order of its held-out loss after them (nas.search.rank);
    # None: the task's default (seg 60, pose 0: off), 0: off. Top 1: one network per family,
    # as within a family the supernet ranks better than 60 own steps do (pose's ground truth)
    rank_finetune: int | None = None
    rank_finetune_top: int = 1
    # then the supernet trains this many more epochs with the head restricted to the family of
    # the shortlist's best, and the family's networks are ranked again by its held-out loss
    # (nas.search.family); segmentation spaces with the shortlist step only. Off by default: on
    # the CamVid proof it picked a network no better than the shortlist's (46.24 against 46.38
    # test mIoU, results/benchmarks/seg_proof_family.md)
    family_epochs: int = 0
    rank_images: int = 256              # architecture-split images each candidate is scored on
    rank_bn_batches: int = 8            # weight-split batches to recompute BatchNorm statistics
    temperature: float = 5.0            # gumbel: initial temperature, x decay per epoch (FBNet)
    temperature_decay: float = 0.956
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    # the runtime the budget is a latency in (lut.runtimes): "torch" (eager) or "onnxruntime"
    # with ``provider``; None until the table is chosen: a --lut table's own, else eager
    runtime: str | None = None
    provider: str | None = None
    # the table's predictions are multiplied by this for the whole run: set from the speed
    # probe before training (lut.probe: this machine now / when the table was built), kept in
    # the checkpoint so that a resumed search predicts exactly as it started
    latency_correction: float = 1.0
    # how networks are found: "differentiable" (this module), or proposed whole and scored on a
    # trained supernet, "optuna" (TPE; NSGA-II with pareto) or "random" (nas.search.blackbox);
    # for those, ``epochs`` are the supernet's training epochs
    strategy: str = "differentiable"
    trials: int = 200                   # distinct networks scored by the supernet (proxy evals)
    # optuna/random: the supernet's score of a network, held-out "loss" or "metric" (the task's:
    # PCK@0.2 for pose, mIoU for seg; "pck" and "miou" say the same);
    # "score" (seg, every strategy): max mIoU x W(T) (nas.tasks.seg.score) instead of the budget
    # window (differentiable: instead of task + lambda * log_tau(E[latency])); its budget is W's
    # zero, 10 ms
    objective: str = "loss"
    supernet_rule: str = "uniform"      # nas.search.oneshot.RULES
    supernet: str | None = None         # a supernet trained before (snapshot or oneshot.pt)
    storage: str | None = None          # study storage: journal path or RDB URL (default: OUT)
    study: str = "nas-search"           # study name inside the storage
    pareto: bool = False                # accuracy/latency front; one pick per budget
    budgets_ms: tuple[float, ...] | None = None  # pareto: every budget (budget_ms: the largest)
    score_images: int = 200             # held-out training images per proxy evaluation
    score_bn_batches: int = 8           # weight-split batches to recompute BatchNorm statistics
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from nas.search.blackbox import BLACKBOX, OBJECTIVE_ALIASES, OBJECTIVES, STRATEGIES
        from nas.search.oneshot import RULES
        from supernets.space import get_space

        get_task(self.task)
        space_task = get_space(self.space).skeleton.task
        if space_task != self.task:
            raise NasError(f"--space {self.space} is a {space_task} space, not one for --task "
                           f"{self.task} (e.g. --space {DEFAULT_SPACES[self.task]})")

        if self.strategy not in STRATEGIES:
            raise NasError(f"--strategy {self.strategy!r}: expected one of "
                           f"{', '.join(STRATEGIES)}")
        self.objective = OBJECTIVE_ALIASES.get(self.objective, self.objective)
        if self.objective not in (*OBJECTIVES, "score"):
            raise NasError(f"--objective {self.objective!r}: expected one of "
                           f"{', '.join(OBJECTIVES)} (optuna, random) or score")
        if self.objective == "score" and self.pareto:
            raise NasError("--pareto with --objective score: the score already weighs latency "
                           "(W(T)); a front needs an accuracy objective (--objective loss or "
                           "metric)")
        if self.supernet_rule not in RULES:
            raise NasError(f"--supernet-rule {self.supernet_rule!r}: expected one of "
                           f"{', '.join(RULES)}")
        check_int("trials", self.trials)
        check_int("arch_samples", self.arch_samples, minimum=2)
        if self.lam_control not in ("argmax", "expected"):
            raise NasError(f"--lam-control {self.lam_control!r}: expected argmax or expected")
        check_int("score_images", self.score_images)
        check_int("score_bn_batches", self.score_bn_batches)
        if self.budgets_ms is not None:
            self.budgets_ms = tuple(sorted(float(b) for b in self.budgets_ms))
            if len(self.budgets_ms) != len(set(self.budgets_ms)):
                raise NasError(f"--budget: {self.budgets_ms} lists a budget twice")
        if self.pareto:
            if self.strategy not in BLACKBOX:
                raise NasError("--pareto needs --strategy optuna or random (a front of scored "
                               "networks)")
            if not self.budgets_ms or len(self.budgets_ms) < 2:
                raise NasError("--pareto: give several budgets, e.g. --budget 2ms,3ms,5ms (one "
                               "search, one network per budget)")
            self.budget_ms = self.budgets_ms[-1]
        elif self.budgets_ms is not None and len(self.budgets_ms) > 1:
            raise NasError(f"--budget: {len(self.budgets_ms)} budgets need --pareto (one network "
                           "per budget from one search)")
        if self.mode not in MODES:
            raise NasError(f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not (isinstance(self.budget_ms, int | float) and math.isfinite(self.budget_ms)
                and self.budget_ms > 0):
            raise NasError(f"budget_ms {self.budget_ms!r}: expected a positive, finite number "
                           "of milliseconds")
        for name in ("batch_size", "train_samples", "rank_images", "rank_bn_batches"):
            check_int(name, getattr(self, name))
        check_float("arch_split", self.arch_split, positive=True, below=1)
        if self.epochs is None:
            self.epochs = get_task(self.task).search_epochs(
                self.data, batch_size=self.batch_size, arch_split=self.arch_split,
                train_samples=self.train_samples)
        check_int("epochs", self.epochs)
        check_int("rank_samples", self.rank_samples, minimum=0)
        if self.rank_finetune is None:
            self.rank_finetune = get_task(self.task).rank_finetune_steps
        check_int("rank_finetune", self.rank_finetune, minimum=0)
        check_int("rank_finetune_top", self.rank_finetune_top)
        check_int("family_epochs", self.family_epochs, minimum=0)
        if self.family_epochs and self.strategy == "differentiable":
            if not get_space(self.space).head_families()[1]:
                raise NasError(f"--family-epochs {self.family_epochs}: space {self.space} has "
                               "one head family (a segmentation space's step)")
            if not (self.rank_finetune and self.rank_samples):
                raise NasError(f"--family-epochs {self.family_epochs}: needs the ranking and "
                               "its shortlist step (--rank-samples and --rank-finetune above 0)")
        from nas.search.rank import DRAWS

        if self.rank_draw not in DRAWS:
            raise NasError(f"rank_draw {self.rank_draw!r}: expected one of {', '.join(DRAWS)}")
        check_int("seed", self.seed, minimum=0)
        for name in ("arch_batch_size", "threads", "num_joints", "warmup_epochs"):
            check_int(name, getattr(self, name), minimum=0 if name == "warmup_epochs" else 1,
                      optional=True)
        check_float("lam", self.lam)
        check_float("lam_step", self.lam_step, non_negative=True)
        check_float("lam_gain", self.lam_gain, non_negative=True)
        check_float("tau", self.tau, positive=True, not_one=True)  # log(tau) divides the cost
        if self.arch_lr is None:
            self.arch_lr = default_arch_lr(self.mode)
        for name in ("weight_lr", "arch_lr", "temperature", "temperature_decay"):
            check_float(name, getattr(self, name), positive=True)
        for name in ("weight_decay", "arch_weight_decay"):
            check_float(name, getattr(self, name), non_negative=True)
        check_float("drop_path", self.drop_path, non_negative=True, below=1)
        if self.warmup_epochs is None:
            self.warmup_epochs = self.epochs // 2
        if self.arch_batch_size is None:
            self.arch_batch_size = max(1, self.batch_size // 2)
        if not 0 <= self.warmup_epochs < self.epochs:
            raise NasError(f"--warmup-epochs {self.warmup_epochs}: expected 0 to {self.epochs - 1}")
        if self.input_size is not None:
            self.input_size = tuple(self.input_size)
        self.window = tuple(self.window)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Searcher:
    """Runs one search; owns the supernet, the architecture parameters and all random state."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace, predictor, train_set, arch_set,
                 *, accuracy_only: bool = False,
                 bounds_ms: tuple[float, float] | None = None, world: World | None = None):
        self.cfg = cfg
        self.world = world or World()
        self.space = space
        self.task = get_task(cfg.task)
        self.predictor = predictor
        self.train_set = train_set
        self.arch_set = arch_set
        self.accuracy_only = accuracy_only
        self.device = torch.device(self.world.device(cfg.device))
        torch.manual_seed(cfg.seed)  # weight init only; every draw below uses self.gen
        # channels_last: on the CPU, NCHW depthwise-conv backward has a slow path (k5/k7 steps
        # seconds long); channels_last goes through oneDNN and is 10-100x faster.
        self.supernet = SuperNet(space).to(self.device, memory_format=torch.channels_last)
        self.arch = ArchParameters(space.choice_layers()).to(self.device)
        self.opt_w = torch.optim.Adam(self.supernet.parameters(), lr=cfg.weight_lr,
                                      weight_decay=cfg.weight_decay)
        self.opt_a = torch.optim.Adam(self.arch.parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999),
                                      weight_decay=cfg.arch_weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.lam = 0.0 if accuracy_only else cfg.lam
        if self.score_objective:
            self.lam = 1.0   # log mIoU + log W(T): both terms in relative units, no controller
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.lam_trajectory: list[tuple[int, float]] = [(0, self.lam)]
        self.loss_scale: float | None = None   # running mean of the architecture steps' loss
        self._stop = False
        self.bounds_ms = bounds_ms  # (fastest, slowest) predicted latency of the space
        table_path = getattr(getattr(predictor, "table", None), "path", None)
        self.lut_path: str | None = str(table_path) if table_path else None
        # several processes: each rank its share of the split (DistributedSampler)
        self.steps_per_epoch = max(1, math.ceil(len(train_set) / self.world.size)
                                   // cfg.batch_size)

    # -- control ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop at the next step boundary (after writing a checkpoint)."""
        self._stop = True

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    # -- data ------------------------------------------------------------------------------
    def _order(self, dataset, salt: int) -> list[int]:
        """This epoch's order of ``dataset``; with several processes this rank's share of one
        seeded permutation (``DistributedSampler``), every rank a different share."""
        seed = self.cfg.seed * 1_000_003 + salt
        if self.world.enabled:
            sampler = DistributedSampler(dataset, num_replicas=self.world.size,
                                         rank=self.world.rank, shuffle=True, seed=seed)
            sampler.set_epoch(self.epoch * 7919)
            return list(sampler)
        g = torch.Generator().manual_seed(seed + self.epoch * 7919)
        return torch.randperm(len(dataset), generator=g).tolist()

    def _batch(self, dataset, order: list[int], k: int, bs: int) -> dict:
        idx = [order[(k * bs + i) % len(order)] for i in range(bs)]
        return collate(dataset, idx, self.device)

    # -- steps -----------------------------------------------------------------------------
    def _task_loss(self, batch: dict, mixes) -> torch.Tensor:
        return self.task.loss(self.supernet(batch["image"], mixes), batch)

    @property
    def score_objective(self) -> bool:
        return self.cfg.objective == "score" and self.cfg.strategy == "differentiable"

    def _cost(self, expected: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The latency term: log_tau(E[latency]) (with lambda from the budget), or, for
        ``--objective score``, -log W(E[latency]) (``nas.tasks.seg.score.log_weight_cost``)."""
        if self.score_objective:
            from nas.tasks.seg.score import log_weight_cost
            return log_weight_cost(expected).to(like.device, like.dtype)
        return (torch.log(expected) / math.log(self.cfg.tau)).to(like.device, like.dtype)

    def _relative(self, task: torch.Tensor) -> torch.Tensor:
        """The task loss over its running mean, so that the task term is in units of relative
        loss, as the cost term is (a log): a heatmap MSE of ~5e-3 has gradients ~1e-5 that
        lambda x d log_tau(E[latency]) / d alpha (~4e-5 at lambda 0.1) would otherwise swamp,
        and Adam would then follow the sign of the cost gradient alone."""
        value = self.world.mean(float(task.detach()))
        self.loss_scale = value if self.loss_scale is None else \
            0.9 * self.loss_scale + 0.1 * value
        return task / self.loss_scale

    def expected_latency(self) -> torch.Tensor:
        return self.predictor.expected_latency(self.space, self.arch.probs())

    def _weight_step(self, batch: dict, warmup: bool, temperature: float) -> float:
        uniform = warmup or self.cfg.mode in ("path", "reinforce")
        mixes = self.arch.mixes(self.cfg.mode, self.gen, arch_grad=False, uniform=uniform,
                                temperature=temperature, drop_path=self.cfg.drop_path)
        loss = self._task_loss(batch, mixes)
        self.opt_w.zero_grad(set_to_none=True)
        loss.backward()
        # every rank drew the same path (same generator): average the gradients it produced
        self.world.average([p.grad for p in self.supernet.parameters()])
        self.opt_w.step()
        return float(loss.detach())

    def _reinforce_step(self, batch: dict) -> dict:
        """Score-function architecture step over ``arch_samples`` single paths (relax docs)."""
        cfg = self.cfg
        paths = self.arch.sample_paths(self.gen, cfg.arch_samples)
        losses = []
        with torch.no_grad():
            for path in paths:
                out = self.supernet(batch["image"], {lb: [(i, 1.0)] for lb, i in path.items()})
                losses.append(float(self.task.loss(out, batch)))
        if self.world.enabled:   # each path's loss over every rank's batch: the same step
            t = torch.tensor(losses, dtype=torch.float64)
            self.world.average([t])
            losses = t.tolist()
        mean = float(np.mean(losses))
        self.loss_scale = mean if self.loss_scale is None else 0.9 * self.loss_scale + 0.1 * mean
        k = len(losses)
        advantages = [(loss - (k * mean - loss) / (k - 1)) / self.loss_scale for loss in losses]
        task = sum(a * self.arch.log_prob(path) for a, path in zip(advantages, paths,
                                                                   strict=True)) / k
        expected = self.expected_latency()
        loss = task + self.lam * self._cost(expected, task)
        self.opt_a.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_a.step()
        argmax_ms = self.argmax_latency()
        self._adapt_lambda(argmax_ms if cfg.lam_control == "argmax" else float(expected.detach()))
        return {"arch_loss": mean, "expected_ms": float(expected.detach()),
                "argmax_ms": argmax_ms}

    def _arch_step(self, batch: dict, temperature: float) -> dict:
        cfg = self.cfg
        if cfg.mode == "reinforce":
            return self._reinforce_step(batch)
        before = {lb: a.detach().clone() for lb, a in zip(self.arch.labels, self.arch.alphas)}
        mixes = self.arch.mixes(cfg.mode, self.gen, arch_grad=True, temperature=temperature)
        task = self._relative(self._task_loss(batch, mixes))
        expected = self.expected_latency()
        loss = task + self.lam * self._cost(expected, task)
        params = list(self.arch.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self.opt_a.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g if g is not None else torch.zeros_like(p)
        self.world.average([p.grad for p in params])   # the same update on every rank
        self.opt_a.step()
        if cfg.mode == "path":
            self.arch.rescale_sampled(before)
        argmax_ms = self.argmax_latency()
        self._adapt_lambda(argmax_ms if cfg.lam_control == "argmax" else float(expected.detach()))
        return {"arch_loss": float(loss.detach()), "expected_ms": float(expected.detach()),
                "argmax_ms": argmax_ms}

    def argmax_spec(self):
        names = {layer.label: layer.names for layer in self.space.choice_layers()}
        return self.space.spec({lb: names[lb][i] for lb, i in self.arch.argmax().items()})

    def argmax_latency(self) -> float:
        return self.predictor.latency(self.argmax_spec())

    def _adapt_lambda(self, latency_ms: float) -> None:
        """Lambda from ``latency_ms``: a dual step by the most probable network's latency
        (``lam_control="argmax"``: what derivation starts from, but it jumps as the argmax
        changes), or ``lam_gain`` x how far the expected latency lies outside the window
        (``"expected"``: smooth in ``alpha``, zero inside the window)."""
        if self.accuracy_only or self.score_objective:
            return
        ratio = latency_ms / self.cfg.budget_ms
        low, high = self.cfg.window
        error = ratio - high if ratio > high else ratio - low if ratio < low else 0.0
        if self.cfg.lam_control == "expected":
            self.lam = min(max(self.cfg.lam_gain * error, -10.0), 10.0)
        else:
            self.lam = min(max(self.lam + self.cfg.lam_step * error, -10.0), 10.0)

    # -- loop ------------------------------------------------------------------------------
    def run(self, checkpoint: Path | None, *, progress: bool = True,
            on_step: Callable[[Searcher], None] | None = None) -> bool:
        """Train until the last epoch or a stop request; True when the search is complete."""
        total = self.cfg.epochs * self.steps_per_epoch
        progress = progress and self.world.is_main
        checkpoint = checkpoint if self.world.is_main else None   # rank 0 alone writes
        with stop_on_sigint(self.request_stop), tqdm(
                total=total, initial=self.epoch * self.steps_per_epoch + self.step,
                disable=not progress, unit="step", desc="search", dynamic_ncols=True) as bar:
            while not self.finished:
                if not self._run_epoch(bar, on_step):
                    if checkpoint:
                        self.save(checkpoint)
                    return False
                if checkpoint:
                    self.save(checkpoint)
        return True

    def _run_epoch(self, bar: tqdm, on_step) -> bool:
        """The rest of the current epoch; False when stopped at a step boundary."""
        cfg = self.cfg
        warmup = self.epoch < cfg.warmup_epochs
        temperature = cfg.temperature * cfg.temperature_decay ** self.epoch
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        w_order = self._order(self.train_set, 1)
        a_order = self._order(self.arch_set, 2)
        if self.step == 0:
            self._epoch_stats = {"weight_loss": [], "arch_loss": [], "expected_ms": [],
                                 "argmax_ms": [], "start": time.perf_counter()}
        stats = self._epoch_stats
        while self.step < self.steps_per_epoch:
            if self.world.any(self._stop):   # every rank stops at the same step
                return False
            stats["weight_loss"].append(self._weight_step(
                self._batch(self.train_set, w_order, self.step, cfg.batch_size), warmup,
                temperature))
            if not warmup:
                s = self._arch_step(
                    self._batch(self.arch_set, a_order, self.step, cfg.arch_batch_size),
                    temperature)
                for key in ("arch_loss", "expected_ms", "argmax_ms"):
                    stats[key].append(s[key])
            self.step += 1
            bar.update(1)
            status = ({"argmax": f"{stats['argmax_ms'][-1]:.2f}ms", "lam": f"{self.lam:.3g}"}
                      if stats["argmax_ms"] else {"phase": "warm-up"})
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{stats['weight_loss'][-1]:.2e}",
                            **status, refresh=False)
            if on_step:
                on_step(self)
        self._end_epoch(warmup, temperature)
        return True

    def _end_epoch(self, warmup: bool, temperature: float) -> None:
        stats = self._epoch_stats
        world = self.world
        if world.enabled:
            # rank 0's BatchNorm statistics everywhere (each rank normalised its own batches),
            # and a check that the architecture parameters are the same on every rank
            world.broadcast_tensors(self.supernet.buffers())
            world.check_agree(round(float(sum(a.detach().double().sum() for a in
                                              self.arch.alphas)), 9),
                              "the architecture parameters (a checksum)")
        with torch.no_grad():
            expected = float(self.expected_latency())
        probs = {lb: [round(float(x), 5) for x in p.detach()]
                 for lb, p in self.arch.probs().items()}
        self.history.append({
            "epoch": self.epoch + 1,
            "phase": "warmup" if warmup else "search",
            "weight_loss": world.mean(float(np.mean(stats["weight_loss"]))),
            "arch_loss": world.mean(float(np.mean(stats["arch_loss"])))
            if stats["arch_loss"] else None,
            "expected_ms": expected,
            "argmax_ms": self.argmax_latency(),
            "lam": self.lam,
            "entropy": self.arch.entropy(),
            "layer_entropy": self.arch.layer_entropies(),
            "temperature": temperature if self.cfg.mode == "gumbel" else None,
            "seconds": time.perf_counter() - stats["start"],
            "processes": world.size,
            "probs": probs,
        })
        self.lam_trajectory.append((self.epoch + 1, self.lam))
        self.epoch += 1
        self.step = 0

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "processes": self.world.size,
            "supernet": self.supernet.state_dict(),
            "arch": self.arch.state_dict(),
            "opt_w": self.opt_w.state_dict(),
            "opt_a": self.opt_a.state_dict(),
            "lam": self.lam,
            "loss_scale": self.loss_scale,
            "gen": self.gen.get_state(),
            "history": self.history,
            "lam_trajectory": self.lam_trajectory,
            "epoch_stats": getattr(self, "_epoch_stats", None),
            "lut_path": self.lut_path,
            "probe": getattr(self, "probe", None),
        }

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.arch.load_state_dict(state["arch"])
        self.opt_w.load_state_dict(state["opt_w"])
        self.opt_a.load_state_dict(state["opt_a"])
        self.lam = state["lam"]
        self.loss_scale = state.get("loss_scale")
        self.gen.set_state(state["gen"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.step = resumed_step(self.step, state.get("processes", 1), self.world.size,
                                 self.steps_per_epoch)
        self.history = state["history"]
        self.lam_trajectory = [tuple(x) for x in state["lam_trajectory"]]
        if state.get("epoch_stats") is not None:
            self._epoch_stats = state["epoch_stats"]
            self._epoch_stats["start"] = time.perf_counter()

    def save(self, path: Path) -> None:
        import io

        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """The raw checkpoint dict; NasError naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise NasError(f"{path}: no search checkpoint here (expected a file written by nas search)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise NasError(f"{path}: corrupt search checkpoint ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise NasError(f"{path}: not a search checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state
