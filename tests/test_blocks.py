"""The shared building blocks (minidiff/models/blocks.py): float64 gradient checks of each block in
the configurations the U-Net, the VAE and the text encoder build, their layer names, and their
errors. (The U-Net's time-conditioned ResBlock and its SpatialTransformer are checked in
test_unet.py, the whole VAE and text encoder in their own files.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.models.blocks import (CLIP_NAMES, DIFFUSERS_NAMES, AttnBlock, Downsample, FeedForward, ResBlock,
                                    TransformerBlock, Upsample, groups_for, to_image, to_tokens)
from minidiff.models.text_encoder import causal_mask
from minidiff.nn.gradcheck import check_module
from minidiff.nn.module import Module

GRADCHECK = settings(max_examples=10, deadline=None)
# attention blocks are checked with eps 3e-6: at 1e-5 the central difference's O(eps^2) error can pass
# 1e-6 (see test_unet's transformer check), at 1e-6 the rounding noise nears it


def randomize(block, seed):
    """Random float64 parameters (norm gains around 1), so no branch starts at zero."""
    rng = np.random.default_rng(seed)
    for name, p in block.named_parameters():
        if p.data.ndim >= 2:
            p.data = rng.uniform(-1, 1, p.shape) / np.sqrt(np.prod(p.shape[1:]))
        else:
            p.data = 0.2 * rng.standard_normal(p.shape) + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
    return block


class WithMasks(Module):
    """A TransformerBlock as a function of (x[, context]) alone: the masks are fixed, not inputs."""

    def __init__(self, block, mask=None, context_mask=None):
        self.block, self.mask, self.context_mask = block, mask, context_mask

    def forward(self, x, context=None):
        return self.block(x, mask=self.mask, context=context, context_mask=self.context_mask)

    def backward(self, dy):
        dx, dcontext = self.block.backward(dy)
        return dx if dcontext is None else (dx, dcontext)


# -- gradient checks -------------------------------------------------------------------------------
@GRADCHECK
@given(c_in=st.sampled_from([4, 8]), c_out=st.sampled_from([4, 8]), H=st.integers(2, 4), W=st.integers(2, 4),
       seed=st.integers(0, 2 ** 16))
def test_resblock_without_time_embedding_gradients_match_finite_differences(c_in, c_out, H, W, seed):
    block = randomize(ResBlock(c_in, c_out, norm_groups=2, eps=1e-6, rng=np.random.default_rng(seed)), seed)
    assert block.time_emb_proj is None and all("time" not in name for name, _ in block.named_parameters())
    x = np.random.default_rng(seed + 1).standard_normal((2, c_in, H, W))
    report = check_module(block, [x], seed=seed, eps=1e-5, max_coords=16)
    assert report.max_error < 1e-6, report


@pytest.mark.parametrize("asymmetric", [False, True], ids=["unet", "vae"])
def test_downsample_gradients_match_finite_differences_and_halve_the_size(asymmetric):
    block = randomize(Downsample(3, asymmetric=asymmetric, rng=np.random.default_rng(0)), 0)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 4))
    assert block(x).shape == (2, 3, 3, 2)
    report = check_module(block, [x], seed=0, eps=1e-5)
    assert report.max_error < 1e-6, report


def test_the_asymmetric_pad_is_bottom_and_right_only():
    """A 3x3 stride-2 kernel that reads only its top-left tap sees x[0, 0] at output (0, 0) with the
    VAE's padding, and the zero padding there with the U-Net's."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4) + 1
    for asymmetric, expected in ((True, 1.0), (False, 0.0)):
        block = Downsample(1, asymmetric=asymmetric).to(dtype=np.float64)
        block.conv.weight.data[...] = 0
        block.conv.weight.data[0, 0, 0, 0] = 1
        block.conv.bias.data[...] = 0
        assert block(x)[0, 0, 0, 0] == expected


def test_upsample_gradients_match_finite_differences():
    block = randomize(Upsample(2, rng=np.random.default_rng(0)), 0)
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 2))
    assert block(x).shape == (1, 2, 6, 4)
    report = check_module(block, [x], seed=0, eps=1e-5)
    assert report.max_error < 1e-6, report


@pytest.mark.parametrize("gated, approximate", [(False, "none"), (False, "tanh"), (True, "none")],
                         ids=["gelu", "gelu_tanh", "geglu"])
def test_feed_forward_gradients_match_finite_differences(gated, approximate):
    block = randomize(FeedForward(4, 6, gated=gated, approximate=approximate, rng=np.random.default_rng(0)), 0)
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    report = check_module(block, [x], seed=0, eps=1e-5)
    assert report.max_error < 1e-6, report


@GRADCHECK
@given(length=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_causal_clip_block_gradients_match_finite_differences(length, seed):
    """The text encoder's block: causal self-attention, GELU feed-forward, biased projections."""
    block = TransformerBlock(8, 2, 16, gelu_approximate="tanh", attention_bias=True, names=CLIP_NAMES,
                             rng=np.random.default_rng(seed))
    mask = causal_mask(length)[None, None]                          # (1, 1, L, L)
    x = np.random.default_rng(seed + 1).standard_normal((2, length, 8))
    report = check_module(WithMasks(randomize(block, seed), mask=mask), [x], seed=seed, eps=3e-6, max_coords=16)
    assert report.max_error < 1e-6, report


@GRADCHECK
@given(tokens=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_cross_attending_block_gradients_match_finite_differences(tokens, seed):
    """The U-Net's block over tokens: self-attention, cross-attention to a masked context, GEGLU."""
    rng = np.random.default_rng(seed + 1)
    block = randomize(TransformerBlock(6, 2, 12, context_dim=5, gated_ff=True, rng=np.random.default_rng(seed)),
                      seed)
    context_mask = rng.random((2, tokens)) < 0.7
    context_mask[:, 0] = True                                       # every query sees at least one token
    inputs = [rng.standard_normal((2, 4, 6)), rng.standard_normal((2, tokens, 5))]
    report = check_module(WithMasks(block, context_mask=context_mask[:, None, None, :]), inputs, seed=seed,
                          eps=3e-6, max_coords=16)
    assert report.max_error < 1e-6, report
    assert "input:x1" in report.errors


def test_vae_attention_block_gradients_match_finite_differences():
    block = randomize(AttnBlock(4, 2, 1e-6, rng=np.random.default_rng(0)), 0)
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 2))
    report = check_module(block, [x], seed=0, eps=1e-5)
    assert report.max_error < 1e-6, report


# -- names, shapes, errors ---------------------------------------------------------------------------
def test_a_block_names_its_layers_as_the_model_it_reproduces():
    clip = TransformerBlock(8, 2, 16, attention_bias=True, names=CLIP_NAMES)
    sd = TransformerBlock(8, 2, 16, context_dim=4, gated_ff=True, names=DIFFUSERS_NAMES)
    assert [n for n, _ in clip.named_parameters() if n.endswith("weight")] == [
        "layer_norm1.weight", "self_attn.to_q.weight", "self_attn.to_k.weight", "self_attn.to_v.weight",
        "self_attn.to_out.weight", "layer_norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
    assert {n.split(".")[0] for n, _ in sd.named_parameters()} == {"norm1", "attn1", "norm2", "attn2", "norm3", "ff"}
    assert sd.state_dict()["ff.proj.weight"].shape == (32, 8)        # GEGLU: [a, gate] = proj(x)
    assert clip.self_attention is clip.self_attn and clip.cross_attention is None
    assert sd.cross_attention is sd.attn2 and sd.feed_forward.linear_out is sd.ff.out


def test_tokens_and_image_are_inverse_reshapes():
    x = np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    tokens = to_tokens(x)
    assert tokens.shape == (2, 20, 3) and tokens[1, 7, 2] == x[1, 2, 1, 2]
    assert np.array_equal(to_image(tokens, x.shape), x)


def test_groups_are_the_largest_divisor_at_most_norm_groups():
    assert [groups_for(c, 32) for c in (6, 24, 64, 96)] == [6, 24, 32, 32]
    assert groups_for(6, 4) == 3


def test_blocks_refuse_inputs_they_were_not_built_for():
    with pytest.raises(ValueError, match="pass temb exactly when the block was built with time_embed_dim"):
        ResBlock(4, 4, norm_groups=2)(np.zeros((1, 4, 2, 2), np.float32), np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="pass temb exactly when"):
        ResBlock(4, 4, norm_groups=2, time_embed_dim=8)(np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="a context was given but this block has no cross-attention"):
        TransformerBlock(4, 2, 8)(np.zeros((1, 3, 4), np.float32), context=np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="these layer names have no cross-attention"):
        TransformerBlock(4, 2, 8, context_dim=4, names=CLIP_NAMES)
