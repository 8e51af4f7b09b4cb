"""Budget parsing, relaxations and budget-constrained derivation (no latency table needed)."""

import math

import numpy as np
import pytest
import torch

from nas.search.budget import parse_budget
from nas.search.derive import derive
from nas.search.relax import ArchParameters
from supernets.errors import NasError
from supernets.flops import op_macs
from supernets.space import get_space


@pytest.mark.parametrize("text, ms", [("3ms", 3.0), ("800us", 0.8), ("0.004s", 4.0),
                                      (" 2.5 ms ", 2.5), ("1e-3s", 1.0)])
def test_parse_budget(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["3 parsecs", "-1ms", "0ms", "ms", "3", "", "nanms"])
def test_parse_budget_rejects(text):
    with pytest.raises(NasError, match="--budget"):
        parse_budget(text)


@pytest.fixture(scope="module")
def space():
    return get_space("cpu-small", input_size=(64, 64))


def macs_latency(spec):
    """A deterministic stand-in cost model: MACs in millions, layer by layer."""
    return sum(op_macs(lay.op, lay.in_chs, lay.out_chs, lay.stride, lay.in_hw)
               for lay in spec.layers()) / 1e6


def test_weight_step_mixes_carry_no_arch_gradient(space):
    arch = ArchParameters(space.choice_layers())
    gen = torch.Generator().manual_seed(0)
    for mode in ("softmax", "gumbel"):
        mix = arch.mixes(mode, gen, arch_grad=False, drop_path=0.5)
        for m in mix.values():
            assert 1 <= len(m) and all(not (torch.is_tensor(w) and w.requires_grad) for _, w in m)
    mix = arch.mixes("softmax", gen, arch_grad=True)
    assert all(len(m) == len(layer.candidates)
               for m, layer in zip(mix.values(), space.choice_layers()))


def test_two_path_rescale_keeps_undrawn_probabilities(space):
    arch = ArchParameters(space.choice_layers())
    gen = torch.Generator().manual_seed(3)
    before = {lb: a.detach().clone() for lb, a in zip(arch.labels, arch.alphas)}
    mixes = arch.mixes("path", gen, arch_grad=True)
    loss = sum(float(i) * w for m in mixes.values() for i, w in m)
    loss.backward()
    with torch.no_grad():
        for a in arch.alphas:
            a -= 0.5 * a.grad
    arch.rescale_sampled(before)
    for lb, a in zip(arch.labels, arch.alphas):
        drawn = set(int(i) for i, _ in mixes[lb])
        p_old, p_new = before[lb].softmax(-1), a.detach().softmax(-1)
        undrawn = [i for i in range(len(a)) if i not in drawn]
        assert torch.allclose(p_old[undrawn], p_new[undrawn], atol=1e-6)
        assert not torch.allclose(p_old, p_new)


def test_derive_argmax_without_budget(space):
    rng = np.random.default_rng(0)
    probs = {layer.label: torch.tensor(rng.dirichlet(np.ones(len(layer.candidates))))
             for layer in space.choice_layers()}
    d = derive(space, probs, macs_latency, window=None)
    for layer in space.choice_layers():
        assert d.spec.choices[layer.label] == layer.names[int(probs[layer.label].argmax())]
    assert d.changed == ()


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_derive_lands_in_window(space, fraction):
    largest = macs_latency(space.largest())
    budget = fraction * largest
    uniform = {layer.label: torch.full((len(layer.candidates),), 1 / len(layer.candidates))
               for layer in space.choice_layers()}
    # bias towards the biggest ops so the argmax is over budget and must be pulled down
    big = {lb: p.clone() for lb, p in uniform.items()}
    for layer in space.choice_layers():
        i = layer.index(space.largest().choices[layer.label])
        big[layer.label][i] += 0.05
    for probs in (uniform, big):
        d = derive(space, probs, macs_latency, window=(0.85 * budget, budget))
        assert d.in_window and 0.85 * budget <= d.latency_ms <= budget
        assert d.latency_ms == pytest.approx(macs_latency(d.spec))


def test_derive_prefers_probable_ops_inside_window(space):
    """With a loose window the most probable architecture is kept as is."""
    rng = np.random.default_rng(1)
    probs = {layer.label: torch.tensor(rng.dirichlet(np.ones(len(layer.candidates))))
             for layer in space.choice_layers()}
    argmax = derive(space, probs, macs_latency, window=None)
    t = argmax.latency_ms
    d = derive(space, probs, macs_latency, window=(0.5 * t, 2 * t))
    assert d.spec == argmax.spec
    assert math.isclose(d.latency_ms, t)


def test_path_mode_draws_one_candidate_for_weights_two_for_architecture(space):
    arch = ArchParameters(space.choice_layers())
    gen = torch.Generator().manual_seed(0)
    weight = arch.mixes("path", gen, arch_grad=False)
    assert all(len(m) == 1 and m[0][1] == 1.0 for m in weight.values())
    archm = arch.mixes("path", gen, arch_grad=True)
    for m in archm.values():
        (i, wi), (j, wj) = m
        assert i != j and torch.isclose(wi + wj, torch.tensor(1.0)) and wi.requires_grad


@pytest.mark.parametrize("mode", ["softmax", "path"])
def test_task_loss_reaches_every_choice_including_head_widths(space, mode):
    """BatchNorm cancels plain scaling; the supernet's mixing must still give gradients."""
    from supernets.supernet import SuperNet

    torch.manual_seed(0)
    net = SuperNet(space).train()
    arch = ArchParameters(space.choice_layers())
    x = torch.randn(4, 3, *space.skeleton.input_size, generator=torch.Generator().manual_seed(0))
    target = torch.rand(4, space.skeleton.num_joints, *space.skeleton.heatmap_size,
                        generator=torch.Generator().manual_seed(1))
    grads = []
    for seed in range(3 if mode == "path" else 1):
        mixes = arch.mixes(mode, torch.Generator().manual_seed(seed), arch_grad=True)
        loss = ((net(x, mixes) - target) ** 2).mean()
        grads.append(torch.autograd.grad(loss, list(arch.alphas)))
    for k, label in enumerate(arch.labels):
        g = max(float(gs[k].abs().max()) for gs in grads)
        assert g > 1e-5, f"no task gradient for {label} ({g:.1e})"


def test_reinforce_paths_follow_the_probabilities_and_log_prob_is_their_sum(space):
    from scipy import stats

    arch = ArchParameters(space.choice_layers())
    with torch.no_grad():
        arch.alphas[0].copy_(torch.linspace(-1.0, 1.0, len(arch.alphas[0])))
    gen = torch.Generator().manual_seed(0)
    paths = arch.sample_paths(gen, 3000)
    label = arch.labels[0]
    counts = np.bincount([p[label] for p in paths], minlength=len(arch.alphas[0]))
    expected = arch.probs()[label].detach().double().numpy()
    expected = expected / expected.sum() * len(paths)
    assert stats.chisquare(counts, expected).pvalue > 0.001
    lp = arch.log_prob(paths[0])
    manual = sum(a.detach().log_softmax(-1)[paths[0][lb]].item()
                 for lb, a in zip(arch.labels, arch.alphas))
    assert lp.item() == pytest.approx(manual)


def test_reinforce_step_raises_the_probability_of_the_lower_loss_candidate(space, monkeypatch):
    """A supernet whose loss is lower when the first layer takes candidate 0: after a few
    architecture steps with no cost term, candidate 0 is the most probable there, and only the
    layers whose choice changes the loss move much."""
    from nas.search.searcher import SearchConfig, Searcher

    class Pred:
        def expected_latency(self, space, probs):
            return torch.tensor(1.0, dtype=torch.float64) + 0 * sum(p.sum() for p in
                                                                    probs.values())

        def latency(self, spec):
            return 1.0

    cfg = SearchConfig(budget_ms=1.0, space="cpu-small", input_size=(64, 64), mode="reinforce",
                       epochs=2, warmup_epochs=0, train_samples=16, batch_size=8,
                       arch_lr=0.05, lam_control="expected", arch_samples=4)
    searcher = Searcher(cfg, space, Pred(), [], [], accuracy_only=True)
    first = searcher.arch.labels[0]
    chosen = {}

    class FakeSupernet(torch.nn.Module):
        def forward(self, image, mixes):
            chosen["i"] = mixes[first][0][0]
            return torch.full((image.shape[0], 1, 2, 2), 0.0 if chosen["i"] == 0 else 1.0)

    monkeypatch.setattr(searcher, "supernet", FakeSupernet())
    monkeypatch.setattr(searcher.task, "loss", lambda out, batch: out.mean() + 1.0)
    batch = {"image": torch.zeros(2, 3, 4, 4), "target": None, "target_weight": None}
    for _ in range(40):
        searcher._reinforce_step(batch)
    probs = {lb: p.detach() for lb, p in searcher.arch.probs().items()}
    assert int(probs[first].argmax()) == 0 and float(probs[first][0]) > 0.5
    others = [float(probs[lb].max()) for lb in searcher.arch.labels[1:]]
    assert max(others) < float(probs[first][0])
