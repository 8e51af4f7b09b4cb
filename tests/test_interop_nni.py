"""NNI interop (``nas.interop.nni``): runs where the extra is installed, skips cleanly elsewhere;
the missing-extra message is checked everywhere."""

import builtins

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm
from torch import nn

from nas.interop import nni as interop
from supernets.errors import NasError
from supernets.model import PoseNet
from supernets.space import get_space


def _has_nni() -> bool:
    try:
        interop.nni_version()
    except NasError:
        return False
    return True


needs_nni = pytest.mark.skipif(not _has_nni(),
                               reason=f"NNI extra not installed ({interop.INSTALL})")


@pytest.fixture(scope="module")
def space():
    return get_space("cpu-small", input_size=(64, 64))


def test_missing_nni_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_nni(name, *args, **kwargs):
        if name == "nni" or name.startswith("nni."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nni)
    interop._space_class.cache_clear()
    try:
        with pytest.raises(NasError, match=r"NNI interop needs the extra .*\.\[nni\]") as e:
            interop.model_space(get_space("cpu-small"))
        assert "\n" not in str(e.value)
    finally:
        interop._space_class.cache_clear()


def test_round_trip_is_identity_for_random_specs(space):
    rng = np.random.default_rng(0)
    for i in range(20):
        spec = space.sample(rng, name=f"r{i}")
        arch = interop.from_spec(spec)
        assert all(isinstance(v, str) for v in arch.values())
        back = interop.to_spec(space, arch, name=spec.name)
        assert back == spec


@pytest.mark.parametrize("change, match", [
    ({"stage9.block0": "skip"}, r"unknown label 'stage9.block0'"),
    ({"stage1.block0": "skip"}, r"\['stage1.block0'\] = 'skip' is not a candidate"),
    ({"head.up1": "up_plain_c48"}, r"\['head.up1'\] = 'up_plain_c48' is not a candidate"),
    ({"head.up1": 3}, r"\['head.up1'\] = 3 is not a candidate"),
])
def test_bad_label_or_candidate_is_named(space, change, match):
    arch = interop.from_spec(space.largest())
    with pytest.raises(NasError, match=match) as e:
        interop.to_spec(space, {**arch, **change})
    assert "\n" not in str(e.value)


def test_missing_label_is_named(space):
    arch = interop.from_spec(space.largest())
    del arch["head.up2"]
    with pytest.raises(NasError, match=r"no choice for label 'head.up2'"):
        interop.to_spec(space, arch)


# -- with NNI ----------------------------------------------------------------------------------

def _copy_standalone_weights(frozen: nn.Module, model: PoseNet, spec) -> None:
    """The standalone network's weights into the frozen NNI network's modules for the same op at
    the same input width."""
    layers = spec.layers()
    with torch.no_grad():
        for module, layer in zip(frozen.layers, layers, strict=True):
            module.op(layer.in_chs).load_state_dict(model.layer(layer.label).state_dict())


@needs_nni
def test_model_space_has_one_layer_choice_per_choice_layer(space):
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace

    net = interop.model_space(space)
    assert isinstance(net, ModelSpace)
    choices = {m.label: m for m in net.modules() if isinstance(m, LayerChoice)}
    assert list(choices) == space.skeleton.choice_labels()
    for layer in space.choice_layers():
        assert list(choices[layer.label].names) == layer.names


@needs_nni
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frozen_nni_network_computes_the_standalone_network(space, seed):
    spec = space.sample(np.random.default_rng(seed), name="s")
    torch.manual_seed(seed)
    model = PoseNet(spec).eval()
    randomise_batchnorm(model, seed)
    frozen = interop.model_space(space).freeze(interop.from_spec(spec)).eval()
    _copy_standalone_weights(frozen, model, spec)
    x = torch.randn(2, 3, *space.skeleton.input_size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(x)
        got = frozen(x)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


@needs_nni
def test_nni_sampled_architecture_is_one_of_our_specs(space):
    net = interop.model_space(space)
    for seed in range(5):
        arch: dict = {}
        net.random(memo=arch, random_state=np.random.RandomState(seed))
        spec = interop.to_spec(space, arch)
        assert interop.from_spec(spec) == arch


@needs_nni
def test_darts_supernet_runs_forward_and_backward(space):
    """NNI's DARTS mixes candidates of different widths (the head) through the per-width
    layout: one output shape, gradients for every architecture weight."""
    from nni.nas.strategy import DARTS

    net = DARTS().mutate_model(interop.model_space(space))
    x = torch.randn(2, 3, *space.skeleton.input_size)
    y = net(x)
    h, w = space.skeleton.heatmap_size
    assert y.shape == (2, space.skeleton.num_joints, h, w)
    y.square().mean().backward()
    alphas = [p for n, p in net.named_parameters() if "_arch_alpha" in n]
    assert len(alphas) == len(space.choice_layers())
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in alphas)
