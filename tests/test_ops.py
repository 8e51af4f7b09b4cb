"""The op vocabulary: every op builds, runs forward and backward, and has the shape it promises."""

import pytest
import torch
from torch import nn

from supernets.flops import count_module, op_macs
from supernets.ops import BACKBONE_OPS, HEAD_OPS, OPS, build_op, op_kind

MB_OPS = [name for name in BACKBONE_OPS if name != "skip"]


def _forward_backward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Train-mode forward and backward; asserts finite output and finite gradients everywhere."""
    module.train()
    x = x.clone().requires_grad_(True)
    y = module(x)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    return y


def _input(chs: int, hw: int = 8, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, chs, hw, hw, generator=torch.Generator().manual_seed(0))


def test_vocabulary_is_the_grid_of_kernels_expansions_and_head_variants():
    assert sorted(BACKBONE_OPS) == sorted(
        [f"mb_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6)] + ["skip"])
    assert sorted(HEAD_OPS) == sorted(
        f"{base}{sic}" for base in ("up_plain", "up_dw", "up_ir_e3") for sic in ("", "_sic"))
    assert set(OPS) == set(BACKBONE_OPS) | set(HEAD_OPS) | {"stem", "heatmap"}


@pytest.mark.parametrize("name", MB_OPS)
@pytest.mark.parametrize("in_chs,out_chs,stride", [(8, 8, 1), (8, 12, 1), (8, 12, 2)])
def test_mbconv_forward_backward(name, in_chs, out_chs, stride):
    y = _forward_backward(build_op(name, in_chs, out_chs, stride), _input(in_chs))
    assert y.shape == (2, out_chs, 8 // stride, 8 // stride)


def test_skip_is_identity():
    x = _input(8)
    assert torch.equal(build_op("skip", 8, 8, 1)(x), x)


@pytest.mark.parametrize("in_chs,out_chs,stride", [(8, 8, 2), (8, 12, 1)])
def test_skip_refuses_stride_or_width_change(in_chs, out_chs, stride):
    with pytest.raises(ValueError, match="skip"):
        build_op("skip", in_chs, out_chs, stride)


@pytest.mark.parametrize("name", list(HEAD_OPS))
@pytest.mark.parametrize("in_chs,out_chs", [(8, 8), (12, 8), (8, 12)])
def test_head_op_doubles_resolution_forward_backward(name, in_chs, out_chs):
    y = _forward_backward(build_op(name, in_chs, out_chs, 2), _input(in_chs, hw=4))
    assert y.shape == (2, out_chs, 8, 8)


@pytest.mark.parametrize("name", list(HEAD_OPS))
def test_head_op_refuses_stride_other_than_2(name):
    with pytest.raises(ValueError, match="stride 2"):
        build_op(name, 8, 8, 1)


def test_stem_halves_resolution():
    y = _forward_backward(build_op("stem", 3, 16, 2), _input(3, hw=16))
    assert y.shape == (2, 16, 8, 8)


def test_heatmap_conv_gives_one_map_per_joint():
    y = _forward_backward(build_op("heatmap", 32, 14, 1), _input(32))
    assert y.shape == (2, 14, 8, 8)


def test_unknown_op_names_the_op():
    with pytest.raises(KeyError, match="mb_k9_e6"):
        build_op("mb_k9_e6", 8, 8, 1)


def test_op_kind():
    assert op_kind("mb_k5_e3") == "backbone"
    assert op_kind("skip") == "backbone"
    assert op_kind("up_dw_sic") == "head"
    assert op_kind("stem") == "fixed"
    with pytest.raises(KeyError):
        op_kind("conv")


def test_mbconv_residual_only_when_shape_is_kept():
    """With the projection's BN scaled to zero the block's branch is zero: the output is the
    input where there is a residual connection, and zero where there is none."""
    x = _input(8)
    for out_chs, stride, residual in [(8, 1, True), (12, 1, False), (8, 2, False)]:
        block = build_op("mb_k3_e3", 8, out_chs, stride).eval()
        nn.init.zeros_(block.project[1].weight)
        with torch.no_grad():
            y = block(x)
        if residual:
            assert torch.equal(y, x)
        else:
            assert not y.any()


def test_sic_is_depthwise_3x3_with_bias_and_no_batchnorm():
    sic = build_op("up_plain_sic", 8, 6, 2)[1]
    (conv,) = [m for m in sic.modules() if isinstance(m, nn.Conv2d)]
    assert conv.kernel_size == (3, 3) and conv.groups == 6 and conv.bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sic.modules())


# -- MACs against hand computations ----------------------------------------------------------

def test_macs_of_a_single_conv():
    # 3x3, stride 2, 4 -> 8 channels on 16x16: every one of the 8x8x8 outputs takes 4*3*3 MACs.
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
    params, macs = count_module(conv, (1, 4, 16, 16))
    assert macs == 8 * 8 * 8 * (4 * 3 * 3)
    assert params == 8 * 4 * 3 * 3


def test_macs_of_a_transposed_conv():
    # 4x4 transposed, stride 2: every input pixel is scattered through 4*4*out weights per input
    # channel.
    _, macs = count_module(nn.ConvTranspose2d(4, 8, 4, 2, 1, bias=False), (1, 4, 8, 8))
    assert macs == 8 * 8 * 4 * (8 * 4 * 4)


def test_macs_of_an_mbconv_block():
    # mb_k3_e6, 8 -> 16, stride 2 at 16x16: hidden 48; expand at 16x16, depthwise and
    # projection at 8x8.
    expand = 16 * 16 * 8 * 48
    depthwise = 8 * 8 * 48 * 3 * 3
    project = 8 * 8 * 48 * 16
    assert op_macs("mb_k3_e6", 8, 16, 2, (16, 16)) == expand + depthwise + project
