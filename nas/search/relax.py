"""Architecture parameters and the relaxations that turn them into supernet mixes.

One parameter vector ``alpha[label]`` per choice layer, ``p = softmax(alpha)``.

- ``softmax``: every candidate, weighted by ``p`` (DARTS / EfficientPose).
- ``gumbel``: every candidate, weighted by a Gumbel-softmax sample at temperature ``t``
  (FBNet; ``t`` decays per epoch).
- ``path`` (ProxylessNAS): a weight step runs one candidate per layer drawn from ``p``, so it
  costs one network. An architecture step draws two candidates per layer without replacement
  and mixes them by the softmax of their own alphas; after the step their alphas are shifted
  together so that the probabilities of the candidates not drawn are unchanged (ProxylessNAS's
  rescaling). Two, not one: every op starts with conv + BatchNorm, which cancels a gate that
  only scales a single path, so a single drawn path carries no task gradient; the ratio between
  two paths does.

- ``reinforce``: weight steps run one candidate per layer drawn uniformly (single-path one-shot,
  as the ``path`` mode's); an architecture step runs ``k`` single paths drawn from ``p`` on one
  batch, forward only, and moves ``alpha`` by the score-function gradient of their heatmap
  loss (REINFORCE; each path's baseline is the mean loss of the others, its advantage divided
  by the running mean loss, so the task term is relative and commensurate with the cost term).
  The architecture step so scores exactly what the weights were trained as, single paths, and
  what the proxy study found to rank standalone networks (results/posebench/proxies.md); no
  blend of two paths that the weights never saw.

Drop-path (weight steps of the all-candidate modes): each candidate is dropped with probability
``drop_path`` (at least one survives), so candidates cannot rely on each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from supernets.space import SpaceLayer
from supernets.supernet import Mix

__all__ = ["MODES", "ArchParameters"]

MODES = ("softmax", "gumbel", "path", "reinforce")


class ArchParameters(nn.Module):
    def __init__(self, layers: list[SpaceLayer]):
        super().__init__()
        self.labels = [layer.label for layer in layers]
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(layer.candidates)))
                                       for layer in layers)
        self._sampled: dict[str, Tensor] = {}

    def probs(self) -> dict[str, Tensor]:
        return {lb: a.softmax(-1) for lb, a in zip(self.labels, self.alphas, strict=True)}

    def entropy(self) -> float:
        """Mean over layers of the choice entropy, normalised to [0, 1] (1 = uniform)."""
        total = 0.0
        for a in self.alphas:
            p = a.detach().softmax(-1)
            total += float(-(p * p.clamp_min(1e-12).log()).sum() / torch.log(torch.tensor(len(p))))
        return total / len(self.alphas)

    def argmax(self) -> dict[str, int]:
        return {lb: int(a.argmax()) for lb, a in zip(self.labels, self.alphas, strict=True)}

    # -- mixes -----------------------------------------------------------------------------
    def mixes(self, mode: str, gen: torch.Generator, *, arch_grad: bool, temperature: float = 1.0,
              drop_path: float = 0.0, uniform: bool = False) -> dict[str, Mix]:
        """Per-label mixes for one forward pass.

        ``arch_grad``: the mix carries gradients to ``alpha`` (architecture step); otherwise the
        weights are constants (weight step). ``uniform``: ignore ``alpha`` (weight warm-up).
        """
        out: dict[str, Mix] = {}
        self._sampled = {}
        for label, alpha in zip(self.labels, self.alphas, strict=True):
            a = torch.zeros_like(alpha) if uniform else alpha
            if not arch_grad:
                a = a.detach()
            if mode == "softmax":
                out[label] = self._drop(list(enumerate(a.softmax(-1))), gen, drop_path, arch_grad)
            elif mode == "gumbel":
                u = torch.rand(a.shape, generator=gen).clamp_(1e-9, 1 - 1e-9).to(a.device)
                w = ((a - (-u.log()).log()) / temperature).softmax(-1)
                out[label] = self._drop(list(enumerate(w)), gen, drop_path, arch_grad)
            elif mode == "path" or (mode == "reinforce" and not arch_grad):
                out[label] = self._path(label, a, gen, arch_grad)
            else:
                raise ValueError(f"unknown relaxation {mode!r}; expected one of {MODES}")
        return out

    def _path(self, label: str, a: Tensor, gen: torch.Generator, arch_grad: bool) -> Mix:
        # drawn on the CPU generator whatever the device, so a search draws the same paths on
        # a GPU as on the CPU (and a CUDA tensor cannot be sampled with a CPU generator)
        p = a.detach().softmax(-1).cpu()
        drawn = torch.multinomial(p, 2 if arch_grad else 1, replacement=False, generator=gen)
        if not arch_grad:
            return [(int(drawn[0]), 1.0)]
        drawn = drawn.to(a.device)
        self._sampled[label] = drawn
        q = a[drawn].softmax(-1)
        return [(int(j), q[k]) for k, j in enumerate(drawn)]

    @torch.no_grad()
    def sample_paths(self, gen: torch.Generator, k: int) -> list[dict[str, int]]:
        """``k`` single paths drawn from ``p`` (independently per layer): candidate indices."""
        probs = [a.detach().softmax(-1).cpu() for a in self.alphas]
        return [{lb: int(torch.multinomial(p, 1, generator=gen))
                 for lb, p in zip(self.labels, probs, strict=True)} for _ in range(k)]

    def log_prob(self, path: Mapping[str, int]) -> Tensor:
        """log p(path) under the current ``alpha``, differentiable."""
        return sum(a.log_softmax(-1)[path[lb]] for lb, a in zip(self.labels, self.alphas,
                                                                 strict=True))

    def layer_entropies(self) -> dict[str, float]:
        """Per layer, the choice entropy normalised to [0, 1] (1 = uniform)."""
        out = {}
        for lb, a in zip(self.labels, self.alphas, strict=True):
            p = a.detach().softmax(-1)
            out[lb] = round(float(-(p * p.clamp_min(1e-12).log()).sum()
                                  / torch.log(torch.tensor(float(len(p))))), 4)
        return out

    @staticmethod
    def _drop(mix: list, gen: torch.Generator, drop_path: float, arch_grad: bool) -> Mix:
        if drop_path <= 0 or arch_grad:
            return mix
        keep = torch.rand(len(mix), generator=gen) >= drop_path
        if not keep.any():
            keep[torch.randint(len(mix), (1,), generator=gen)] = True
        return [(i, w) for (i, w), k in zip(mix, keep.tolist(), strict=True) if k]

    @torch.no_grad()
    def rescale_sampled(self, before: Mapping[str, Tensor]) -> None:
        """After a path-mode architecture step: keep the undrawn candidates' probabilities."""
        for label, alpha in zip(self.labels, self.alphas, strict=True):
            drawn = self._sampled.get(label)
            if drawn is None:
                continue
            old = before[label][drawn]
            new = alpha[drawn]
            offset = torch.logsumexp(old, 0) - torch.logsumexp(new, 0)
            alpha[drawn] += offset
