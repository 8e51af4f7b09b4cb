"""Spaces, standalone models and the supernet: shapes, weight sharing, parameter counts."""

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm
from torch import nn

from supernets.errors import NasError
from supernets.flops import complexity
from supernets.model import PoseNet
from supernets.named import load_arch
from supernets.space import SPACES, SearchSpace, get_space
from supernets.supernet import SuperNet

SMALL = (32, 32)  # the smallest input a shipped space accepts (output stride 16)


def _heatmap_shape(batch, spec):
    """Pose: heatmaps at a quarter of the input; seg: class scores at the input's size."""
    h, w = spec.skeleton.input_size
    if spec.skeleton.task == "seg":
        return (batch, spec.skeleton.num_classes, h, w)
    return (batch, spec.skeleton.num_joints, h // 4, w // 4)


def _seeded_supernet(space: SearchSpace, seed: int = 0) -> SuperNet:
    """A supernet whose BatchNorm affine parameters and running statistics are random, so that
    copying them (or not) shows in the outputs; initialisation under a forked, seeded RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SuperNet(space)
    randomise_batchnorm(net, seed)
    return net


def _image(batch, hw, seed=0):
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))


# -- shipped spaces and named architectures ---------------------------------------------------

@pytest.mark.parametrize("space_name", list(SPACES))
def test_space_models_give_quarter_resolution_heatmaps_at_native_size(space_name):
    spec = get_space(space_name).sample(np.random.default_rng(0))
    model = PoseNet(spec).eval()
    with torch.no_grad():
        y = model(_image(1, spec.skeleton.input_size))
    assert y.shape == _heatmap_shape(1, spec)
    assert torch.isfinite(y).all()


def test_mobilenetv2_gives_quarter_resolution_heatmaps():
    spec = load_arch("mobilenetv2")
    assert spec.skeleton.input_size == (256, 256) and spec.skeleton.num_joints == 16
    model = PoseNet(spec).eval()
    with torch.no_grad():
        y = model(_image(1, (256, 256)))
    assert y.shape == (1, 16, 64, 64)


@pytest.mark.parametrize("space_name", list(SPACES))
def test_small_input_override_trains(space_name):
    space = get_space(space_name, input_size=(64, 32), num_joints=5)
    spec = space.sample(np.random.default_rng(3))
    model = PoseNet(spec).train()
    y = model(_image(2, (64, 32)))
    assert y.shape == _heatmap_shape(2, spec) and y.shape[1] == 5
    y.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("space_name", list(SPACES))
def test_supernet_with_every_candidate_mixed_gives_heatmaps(space_name):
    """Softmax relaxation: every candidate of every layer at once (shapes only, on the meta
    device, at the space's native size)."""
    space = get_space(space_name)
    with torch.device("meta"):
        net = SuperNet(space)
        mixes = {layer.label: [(i, torch.tensor(1 / len(layer.candidates)))
                               for i in range(len(layer.candidates))]
                 for layer in net.choice_layers}
        y = net(torch.empty(2, 3, *space.skeleton.input_size), mixes)
    assert y.shape == _heatmap_shape(2, space.sample(np.random.default_rng(0)))


def test_efficientpose_bc_has_34_backbone_choice_layers():
    space = get_space("efficientpose-bc")
    assert space.skeleton.input_size == (256, 256)
    layers = space.choice_layers()
    backbone = [layer for layer in layers if layer.kind == "backbone"]
    head = [layer for layer in layers if layer.kind == "head"]
    assert len(backbone) == 34
    assert [layer.label for layer in head] == ["head.up1", "head.up2"]
    # skip is offered everywhere except on the first block of a stage
    assert [len(layer.candidates) for layer in backbone[:7]] == [6, 7, 7, 7, 7, 7, 6]
    # a head stage chooses an op (3 kinds x with/without SIC) and a width (32/64/96)
    assert all(len(layer.candidates) == 18 for layer in head)


def test_head_stage_after_a_width_choice_sees_every_width():
    layers = {layer.label: layer for layer in get_space("cpu-small").layers()}
    assert layers["head.up1"].in_widths == (96,)
    assert layers["head.up2"].in_widths == (32, 64, 96)
    assert layers["heatmap"].in_widths == (32, 64, 96)


def test_sampling_is_reproducible_from_the_seed():
    space = get_space("cpu-small")
    a = [space.sample(np.random.default_rng(7)).choices for _ in range(2)]
    assert a[0] == a[1]
    assert space.sample(np.random.default_rng(8)).choices != a[0]


def test_largest_is_at_least_as_costly_as_random_specs():
    space = get_space("cpu-small", input_size=SMALL)
    largest = complexity(space.largest()).macs
    rng = np.random.default_rng(0)
    assert all(complexity(space.sample(rng)).macs <= largest for _ in range(3))


# -- supernet with fixed choices == standalone network ----------------------------------------

# Head choices whose widths differ between stages, so that head.up2 and the heatmap conv pick a
# module other than the first input width.
HEADS = [("up_ir_e3_sic_c96", "up_dw_c32"), ("up_plain_c32", "up_ir_e3_c64"),
         ("up_dw_sic_c64", "up_plain_sic_c96"), ("up_plain_sic_c64", "up_dw_sic_c64")]


def _specs(space, n=len(HEADS), seed=0):
    rng = np.random.default_rng(seed)
    specs = []
    for up1, up2 in HEADS[:n]:
        choices = dict(space.sample(rng).choices)
        choices["head.up1"], choices["head.up2"] = up1, up2
        specs.append(space.spec(choices))
    return specs


@pytest.fixture(scope="module")
def small_space():
    return get_space("cpu-small", input_size=SMALL, num_joints=4)


@pytest.fixture(scope="module")
def supernet(small_space):
    return _seeded_supernet(small_space)


def test_supernet_equals_standalone_in_eval_mode(small_space, supernet):
    x = _image(2, SMALL)
    supernet.eval()
    for spec in _specs(small_space):
        model = supernet.standalone(spec)
        assert not model.training
        with torch.no_grad():
            expected = supernet(x, supernet.fixed_mixes(spec))
            got = model(x)
        assert got.shape == (2, 4, 8, 8)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_supernet_equals_standalone_in_train_mode_outputs_and_gradients(small_space, supernet):
    x = _image(4, SMALL, seed=1)
    supernet.train()
    for spec in _specs(small_space, n=2, seed=1):
        model = supernet.standalone(spec)
        assert model.training
        supernet.zero_grad()
        expected = supernet(x, supernet.fixed_mixes(spec))
        got = model(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        expected.square().mean().backward()
        got.square().mean().backward()
        for layer, mixed, target in zip(supernet.space_layers, supernet.mixed, spec.layers()):
            index = layer.index(spec.choices[layer.label]) if layer.searchable else 0
            source = dict(mixed.candidate(target.in_chs, index).named_parameters())
            for name, p in model.layer(layer.label).named_parameters():
                torch.testing.assert_close(p.grad, source[name].grad, rtol=1e-4, atol=1e-6,
                                           msg=f"{layer.label}.{name}")
    supernet.eval()


def _one_hot_mixes(supernet, spec, relaxed_labels):
    """Fixed choices, except that layers in ``relaxed_labels`` get a relaxed mix over all their
    candidates with weight 1 on the chosen one and 0 on the others."""
    mixes = {}
    for layer in supernet.choice_layers:
        chosen = layer.index(spec.choices[layer.label])
        if layer.label in relaxed_labels:
            mixes[layer.label] = [(i, torch.tensor(1.0 if i == chosen else 0.0))
                                  for i in range(len(layer.candidates))]
        else:
            mixes[layer.label] = [(chosen, 1.0)]
    return mixes


def test_backbone_mix_with_all_weight_on_one_candidate_equals_fixed_choice(small_space, supernet):
    supernet.eval()
    spec = _specs(small_space, n=1, seed=2)[0]
    backbone = [layer.label for layer in supernet.choice_layers if layer.kind == "backbone"]
    x = _image(1, SMALL, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, _one_hot_mixes(supernet, spec, backbone)),
                                   supernet.standalone(spec)(x), rtol=1e-5, atol=1e-6)


def test_head_mix_with_all_weight_on_one_candidate_equals_fixed_choice(small_space, supernet):
    supernet.eval()
    spec = _specs(small_space, n=1, seed=2)[0]
    x = _image(1, SMALL, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, _one_hot_mixes(supernet, spec, ["head.up2"])),
                                   supernet.standalone(spec)(x), rtol=1e-5, atol=1e-6)


def test_standalone_copies_weights_not_shares_them(small_space, supernet):
    spec = _specs(small_space, n=1)[0]
    model = supernet.standalone(spec)
    supernet_ptrs = {p.data_ptr() for p in supernet.parameters()}
    assert not any(p.data_ptr() in supernet_ptrs for p in model.parameters())


def test_standalone_rejects_spec_of_another_skeleton(supernet):
    other = get_space("cpu-small", input_size=(64, 64), num_joints=4).sample(
        np.random.default_rng(0))
    with pytest.raises(NasError, match="skeleton"):
        supernet.standalone(other)


def test_standalone_rejects_choice_the_space_does_not_offer():
    space = SearchSpace("k3-only", get_space("cpu-small", input_size=SMALL).skeleton,
                        backbone_ops=("mb_k3_e3", "mb_k3_e6", "skip"))
    net = SuperNet(space)
    choices = dict(space.sample(np.random.default_rng(0)).choices)
    choices["stage2.block1"] = "mb_k7_e6"
    spec = get_space("cpu-small", input_size=SMALL).spec(choices)
    with pytest.raises(NasError, match=r"stage2\.block1.*mb_k7_e6"):
        net.standalone(spec)


# -- parameter counts -------------------------------------------------------------------------

def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_standalone_params_equal_chosen_candidates_of_the_supernet(small_space, supernet):
    for spec in _specs(small_space):
        chosen = 0
        for layer, mixed, target in zip(supernet.space_layers, supernet.mixed, spec.layers()):
            index = layer.index(spec.choices[layer.label]) if layer.searchable else 0
            chosen += _params(mixed.candidate(target.in_chs, index))
        model = supernet.standalone(spec)
        assert _params(model) == chosen


def test_supernet_holds_one_module_per_input_width_and_candidate(small_space, supernet):
    for layer, mixed in zip(supernet.space_layers, supernet.mixed):
        expected = sum(1 for w in layer.in_widths for c in layer.candidates
                       if not (c.op == "skip" and w != c.out_chs))
        assert len(mixed.candidates) == expected, layer.label


# MobileNetV2's (t, c, n, s) table as in the paper, after its first t=1 block (the stem), with
# the 160-channel stage at stride 1 for output stride 16.
MBV2_TABLE = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1),
              (6, 320, 1, 1)]


def _mobilenetv2_params_by_hand(num_joints: int = 16) -> int:
    """Count weights from layer shapes alone: convs have no bias, BN has 2 per channel."""
    def bn(c):
        return 2 * c

    # stem: 3x3 s2 conv 3->32, 3x3 depthwise 32, 1x1 32->16
    total = 3 * 32 * 9 + bn(32) + 32 * 9 + bn(32) + 32 * 16 + bn(16)
    c_in = 16
    for t, c, n, _ in MBV2_TABLE:
        for _ in range(n):
            hidden = c_in * t
            total += c_in * hidden + bn(hidden)      # 1x1 expand
            total += 3 * 3 * hidden + bn(hidden)     # 3x3 depthwise
            total += hidden * c + bn(c)              # 1x1 project
            c_in = c
    for c in (64, 32):                               # 4x4 deconv + BN, then SIC (3x3 dw + bias)
        total += c_in * c * 16 + bn(c) + 9 * c + c
        c_in = c
    return total + c_in * num_joints + num_joints    # heatmap 1x1 conv with bias


def test_mobilenetv2_parameter_count_matches_hand_count():
    spec = load_arch("mobilenetv2")
    assert _mobilenetv2_params_by_hand() == 2_173_840
    assert _params(PoseNet(spec)) == 2_173_840
