"""Several processes, one run: ``torch.distributed`` as ``torchrun`` starts it.

``torchrun --nproc-per-node N -m nas train ...`` (and ``--nnodes``/``--rdzv-*`` across machines,
as torchrun provides) starts N copies of the command with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous in their environment. Each joins the process group once
(``from_env``): backend gloo on CPU, nccl on CUDA, where rank r of a node uses ``cuda:LOCAL_RANK``.
Without torchrun (no ``WORLD_SIZE``, or 1) nothing is initialised and every helper here is the
identity: one process is the world of size 1.

What the run does with several processes (``nas.train``):

- the model is wrapped in ``DistributedDataParallel`` (gradients averaged across ranks at every
  step); the per-rank batch is ``--batch-size``, the global batch ``--batch-size x WORLD_SIZE``,
  and the report states both;
- the training split is divided by ``DistributedSampler`` (the same seeded permutation on every
  rank, each rank its own share, padded to equal length); one process keeps its own order, so
  that a run with one process is the run it was before;
- BatchNorm normalises each rank's own batch (as timm and mmpose train by default) and DDP
  broadcasts rank 0's running statistics at every forward, so every rank holds the same model;
  SyncBatchNorm would cost an all-reduce per BatchNorm layer per step, for per-rank batches that
  are not small here;
- a stop (Ctrl-C, which torchrun forwards to every rank) is agreed at a step boundary by an
  all-reduce of the flag, so no rank waits in a collective for one that stopped;
- rank 0 alone validates, writes checkpoints, logs, metrics and prints; the others receive the
  validation result and the report from it. A resumed run continues from the number of
  *samples* seen, so ``--resume`` works with another number of processes.

A failing rank ends with a non-zero status and torchrun stops the others (its elastic agent
ends the whole group when one worker fails): no rank is left hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from supernets.errors import NasError

__all__ = ["World", "from_env", "resumed_step", "shutdown"]

TIMEOUT = timedelta(minutes=30)   # a rank validating alone keeps the others waiting this long


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` with several processes."""
        if self.enabled and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks (itself with one process)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return float(t.item()) / self.size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (a stop request, say)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def average(self, tensors) -> None:
        """Average ``tensors`` (gradients, loss values) across the ranks in place, in one
        all-reduce of their concatenation."""
        tensors = [t for t in tensors if t is not None]
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_tensors(self, tensors) -> None:
        """Rank 0's values of ``tensors`` (BatchNorm statistics, say) on every rank, in place."""
        if self.enabled:
            for t in tensors:
                dist.broadcast(t, src=0)

    def check_agree(self, value, what: str) -> None:
        """NasError on every rank when the ranks hold different ``value`` (a checksum, a device
        identity): they would search or measure different things."""
        if not self.enabled:
            return
        values = self.gather(value)
        if any(v != values[0] for v in values):
            differ = next(r for r, v in enumerate(values) if v != values[0])
            raise NasError(f"the {self.size} processes disagree about {what}: rank 0 has "
                           f"{values[0]!r}, rank {differ} {values[differ]!r}")

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" \
            else torch.device("cpu")

    def to_dict(self) -> dict:
        return {"processes": self.size, "backend": self.backend}


def from_env(device: str = "cpu") -> World:
    """The process group ``torchrun`` describes, joined once (gloo on CPU, nccl on CUDA); a world
    of one process without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    if not dist.is_available():
        raise NasError("WORLD_SIZE is set (torchrun) but this torch build has no "
                       "torch.distributed")
    cuda = str(device).startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if cuda:
            if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
                raise NasError(f"--device {device} with {size} processes: rank "
                               f"{os.environ.get('RANK')} needs cuda:{local_rank}, and this "
                               f"machine has {torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def shutdown(clean: bool = True) -> None:
    """Leave the process group, if this process joined one. ``clean`` (the command finished on
    this rank): first wait at a barrier for the others, so that no rank closes its connections
    while a peer still completes the last collective (gloo aborts the peer's process then);
    after an error the peers may be elsewhere, so this rank leaves at once."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def resumed_step(step: int, processes: int, now: int, steps_per_epoch: int) -> int:
    """The step of an epoch stopped at ``step`` by ``processes`` processes, continued by
    ``now``: after as many samples as were seen (``step x batch x processes``), at the batch
    boundary at or before them."""
    if processes == now:
        return step
    return min(step * processes // now, steps_per_epoch)
