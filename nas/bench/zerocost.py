"""Zero-cost proxies: scores of an untrained network that are meant to rank trained accuracy.

Each takes a freshly initialised model and (except synflow) one batch of training images, and
returns one number where higher is meant to be better:

* ``synflow`` (Tanaka et al. 2020; as a NAS proxy, Abdelfattah et al. 2021): with every weight
  replaced by its absolute value, BatchNorm as the identity (evaluation mode with fresh
  statistics) and an all-ones input in float64, the sum over conv and linear weights of
  |theta * dR/dtheta|, R the sum of the outputs. Reported as log10 (the raw value spans hundreds
  of orders of magnitude);
* ``naswot`` (Mellor et al. 2021, "NAS without training"): the binary ReLU activation codes of
  the batch, K = codes codes^T + (1 - codes)(1 - codes)^T summed over every ReLU, score
  log |det K|;
* ``jacob_cov`` (Mellor et al. 2020, the first version of the same paper): the correlation of
  the per-image input Jacobians of the summed output, score -sum(log(lambda + k) + 1/(lambda + k))
  over its eigenvalues, k = 1e-5.

The model is modified in place (weights, hooks) only on a deep copy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["PROXIES", "jacob_cov", "naswot", "score_all", "synflow"]

_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def synflow(model: nn.Module, images: torch.Tensor) -> float:
    """log10 of the synaptic flow score (``images`` gives only the input shape)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    x = torch.ones((1, *images.shape[1:]), dtype=torch.float64)
    net.zero_grad(set_to_none=True)
    net(x).sum().backward()
    total = 0.0
    for m in net.modules():
        if isinstance(m, _WEIGHTED) and m.weight.grad is not None:
            total += float((m.weight.detach() * m.weight.grad).abs().sum())
    return math.log10(total) if total > 0 and math.isfinite(total) else \
        (math.inf if total > 0 else -math.inf)


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """log |det K| of the ReLU code kernel of the batch (training mode, as at initialisation)."""
    net = copy.deepcopy(model).train()
    n = images.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(module, inputs, output):
        codes = (output.detach().reshape(n, -1) > 0).double()
        kernel.add_(codes @ codes.T).add_((1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) > 0 else -math.inf


def jacob_cov(model: nn.Module, images: torch.Tensor) -> float:
    """Score of the correlation of per-image input Jacobians (higher: less correlated)."""
    net = copy.deepcopy(model).train()
    x = images.clone().requires_grad_(True)
    net.zero_grad(set_to_none=True)
    net(x).sum().backward()
    jac = x.grad.reshape(x.shape[0], -1).double()
    corr = torch.corrcoef(jac)
    if not torch.isfinite(corr).all():
        return -math.inf
    eig = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-torch.sum(torch.log(eig + k) + 1.0 / (eig + k)))


PROXIES: dict[str, Callable[[nn.Module, torch.Tensor], float]] = {
    "synflow": synflow, "naswot": naswot, "jacob_cov": jacob_cov}


def score_all(build: Callable[[], nn.Module], images: torch.Tensor, *,
              seeds: tuple[int, ...] = (0,)) -> dict:
    """Every proxy of the model ``build()`` makes under each seed: ``{name: {"value": mean over
    seeds, "values": [...], "seconds": mean seconds per evaluation}}``."""
    out = {}
    models = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(build().to(memory_format=torch.channels_last))
    for name, fn in PROXIES.items():
        values, seconds = [], []
        for model in models:
            t0 = time.perf_counter()
            values.append(fn(model, images))
            seconds.append(time.perf_counter() - t0)
        finite = [v for v in values if math.isfinite(v)]
        out[name] = {"value": sum(finite) / len(finite) if finite else values[0],
                     "values": values, "seconds": sum(seconds) / len(seconds)}
    return out
