"""U-Net: float64 gradient checks of the whole model and its blocks, shapes of the named configs,
input validation, caching rules, structural properties (zero init, batch independence, masked
tokens), recorded reference outputs, and the PyTorch twin (and diffusers) on the same weights."""
import dataclasses
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.models.unet import UNet, UNetConfig, unet_resblock, unet_transformer
from minidiff.nn.gradcheck import check_module, relative_error
from minidiff.nn.module import Module, no_grad

NAMED_CONFIGS = ["tiny", "quick16", "pixel32", "latent8"]
BLOCK_GRADCHECK = settings(max_examples=10, deadline=None)

# A second small config for the branches tiny does not take: three levels, attention at the top
# level only, no cross-attention, heads from head_dim, plain GELU feed-forward, GroupNorm groups
# clamped (norm_groups=4 on 6 channels -> 3 groups), dropout configured.
UNCONDITIONAL_3_LEVELS = UNetConfig(in_channels=3, out_channels=1, base_channels=6, channel_mults=(1, 2, 2),
                                    num_res_blocks=1, attention_levels=(0,), head_dim=3, feed_forward="gelu",
                                    norm_groups=4, time_embed_dim=12, image_size=8)


# -- helpers ---------------------------------------------------------------------------------------
_NORM_WEIGHT = re.compile(r"(norm\d?|norm_out)\.weight$")
_QUERY_KEY_WEIGHT = re.compile(r"to_[qk]\.weight$")


def randomize(model, seed=0):
    """Random float64 parameters at the scale of the default init: the zero-initialised output
    layers would otherwise hide every upstream gradient, and gamma = 1, beta = 0 the norms' own.
    Query and key weights are 4x larger, so attention is not nearly uniform: then their gradients
    stand well above the finite differences' rounding noise (~1e-10)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.data.ndim >= 2:
            fan_in = int(np.prod(p.shape[1:]))
            value = rng.uniform(-1, 1, p.shape) / np.sqrt(fan_in)
            if _QUERY_KEY_WEIGHT.search(name):
                value *= 4.0
        else:
            value = 0.2 * rng.standard_normal(p.shape) + (1.0 if _NORM_WEIGHT.search(name) else 0.0)
        p.data = value.astype(np.float64)
    return model


def make_inputs(config, batch=2, tokens=3, seed=1, with_context=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, config.in_channels, config.image_size, config.image_size))
    t = rng.integers(0, 1000, size=batch)
    context = mask = None
    if with_context and config.context_dim is not None:
        context = rng.standard_normal((batch, tokens, config.context_dim))
        mask = np.ones((batch, tokens), bool)
        mask[0, -1] = False                          # one padding token
    return x, t, context, mask


class FixedTimeUNet(Module):
    """The U-Net as a function of (x, context) alone, for check_module (t and the mask are not
    differentiable inputs)."""

    def __init__(self, unet, t, context_mask=None):
        self.unet, self.t, self.context_mask = unet, t, context_mask

    def forward(self, x, context=None):
        return self.unet(x, self.t, context, self.context_mask)

    def backward(self, d_out):
        return self.unet.backward(d_out)


def cached_arrays(model):
    """Names of the modules holding a cache, or any array that is not a parameter."""
    found = []
    for module in model.modules():
        for name, value in vars(module).items():
            if (name == "_cache" and value is not None) or isinstance(value, np.ndarray):
                found.append(f"{type(module).__name__}.{name}")
    return found


# -- gradient checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("with_context", [True, False], ids=["context", "no_context"])
def test_whole_unet_gradients_match_finite_differences(xp, with_context):
    config = UNetConfig.tiny()
    model = randomize(UNet(config))
    x, t, context, mask = make_inputs(config, with_context=with_context)
    if xp is not np:
        model.to("gpu")
        x, context, mask = (None if a is None else xp.asarray(a) for a in (x, context, mask))
    report = check_module(FixedTimeUNet(model, t, mask), [x, context], seed=0, eps=1e-5, max_coords=3)
    errors = report.errors
    assert errors["input:x0"] < 1e-6, report
    if with_context:
        assert errors["input:x1"] < 1e-6, report
    params = [r for r in report.rows if r.kind == "param"]
    assert len(params) == len(model.parameters())
    assert report.max_error < 1e-6, report


@BLOCK_GRADCHECK
@given(c_in=st.sampled_from([4, 6, 8]), c_out=st.sampled_from([4, 6, 8]), batch=st.integers(1, 2),
       H=st.integers(2, 4), W=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_resblock_gradients_match_finite_differences(c_in, c_out, batch, H, W, seed):
    # (at least 2 channels x 2 pixels per GroupNorm group: a smaller group normalises to constants,
    # whose exact-zero gradients leave only rounding noise to compare)
    config = UNetConfig.tiny()
    block = randomize(unet_resblock(c_in, c_out, config, rng=np.random.default_rng(seed)), seed)
    assert (block.conv_shortcut is not None) == (c_in != c_out)
    rng = np.random.default_rng(seed + 1)
    x, temb = rng.standard_normal((batch, c_in, H, W)), rng.standard_normal((batch, config.time_embed_dim))
    report = check_module(block, [x, temb], seed=seed, eps=1e-5, max_coords=16)
    assert report.max_error < 1e-6, report


@BLOCK_GRADCHECK
@given(channels=st.sampled_from([4, 6, 8]), batch=st.integers(1, 2), H=st.integers(1, 3), W=st.integers(1, 3),
       tokens=st.integers(1, 4), with_context=st.booleans(), seed=st.integers(0, 2**16))
def test_transformer_block_gradients_match_finite_differences(channels, batch, H, W, tokens, with_context, seed):
    config = UNetConfig.tiny()                                   # 2 heads, context_dim 6
    block = randomize(unet_transformer(channels, config, rng=np.random.default_rng(seed)), seed)
    rng = np.random.default_rng(seed + 1)
    inputs = [rng.standard_normal((batch, channels, H, W))]
    if with_context:
        mask = rng.random((batch, tokens)) < 0.7
        mask[:, 0] = True                                        # every query sees at least one token
        inputs += [rng.standard_normal((batch, tokens, config.context_dim)), mask[:, None, None, :]]
    # eps 3e-6, not 1e-5: the central difference's O(eps^2) error reached 3.1e-6 on a hypothesis-found
    # case (channels=4, batch=2, H=W=2, tokens=1, seed=1773); at 3e-6 it is 2.8e-7 there
    report = check_module(block, inputs, seed=seed, eps=3e-6, max_coords=16)
    assert report.max_error < 1e-6, report
    assert ("input:x1" in report.errors) == with_context


def test_context_gradient_is_none_without_a_context_and_the_sum_over_cross_attentions_with_one():
    config = UNetConfig.tiny()
    model = randomize(UNet(config))
    x, t, context, _ = make_inputs(config)
    model(x, t)
    assert model.backward(np.ones_like(x))[1] is None
    shares = []                                     # what each cross-attention hands back
    for _, attn2 in model.cross_attentions():
        def recording(dy, _backward=attn2.backward):
            dq, dc = _backward(dy)
            shares.append(dc)
            return dq, dc
        attn2.backward = recording
    model(x, t, context)
    _, dcontext = model.backward(np.ones_like(x))
    assert len(shares) == 4                         # down 1 + mid 1 + up 2 (tiny: attention at level 1)
    assert np.abs(dcontext - sum(shares)).max() < 1e-12 and np.abs(dcontext).max() > 0


def test_cross_attentions_are_named_as_in_the_state_dict_and_store_their_maps():
    config = UNetConfig.tiny()
    model = UNet(config).eval()
    layers = model.cross_attentions()
    names = [name for name, _ in layers]
    assert names == ["down_blocks.1.attentions.0.attn2", "mid_block.attentions.0.attn2",
                     "up_blocks.0.attentions.0.attn2", "up_blocks.0.attentions.1.attn2"]
    assert all(f"{name}.to_k.weight" in model.state_dict() for name in names)
    for _, layer in layers:
        layer.store_attention = True
    x, t, context, mask = (None if a is None else (a.astype(np.float32) if a.dtype == np.float64 else a)
                           for a in make_inputs(config))
    model(x, t, context, mask)
    probs = layers[0][1].last_attention_probs                  # (B, heads, HW at 4x4, S)
    assert probs.shape == (2, 2, 16, 3)
    assert np.allclose(probs.sum(-1), 1, atol=1e-5) and np.all(probs[0, :, :, -1] == 0)


# -- shapes, parameter counts, validation ----------------------------------------------------------
@pytest.mark.parametrize("name", NAMED_CONFIGS)
def test_named_config_output_has_the_input_shape(name):
    config = getattr(UNetConfig, name)()
    model = UNet(config).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, config.in_channels, config.image_size, config.image_size)).astype(np.float32)
    context = None
    if config.context_dim is not None:
        context = rng.standard_normal((1, 5, config.context_dim)).astype(np.float32)
    y = model(x, np.array([999]), context)
    assert y.shape == (1, config.out_channels, config.image_size, config.image_size)
    assert y.dtype == np.float32


def test_parameter_counts_of_the_named_configs_are_as_recorded():
    counts = {name: UNet(getattr(UNetConfig, name)()).num_parameters() for name in NAMED_CONFIGS}
    assert counts == {"tiny": 54_234, "quick16": 934_947, "pixel32": 7_857_667, "latent8": 2_448_100}


def test_config_survives_a_json_round_trip():
    config = UNetConfig.latent8()
    restored = UNetConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
    assert restored == config and restored.channel_mults == (1, 2)


def test_time_embed_dim_defaults_to_four_times_base_channels():
    assert UNetConfig(base_channels=16, channel_mults=(1,), attention_levels=()).time_embed_dim == 64


def test_groups_are_clamped_to_a_divisor_of_the_channels():
    config = UNetConfig(norm_groups=32, channel_mults=(1,), attention_levels=())
    assert [config.groups_for(c) for c in (6, 24, 64, 96)] == [6, 24, 32, 32]
    assert UNetConfig(norm_groups=4, channel_mults=(1,), attention_levels=()).groups_for(6) == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=30), r"image_size=30 is not divisible by .* downsampling 4"),
    (dict(attention_levels=(3,)), r"attention_levels \(3,\) .* 0\.\.2"),
    (dict(num_heads=3), r"128 channels do not split into 3 attention heads"),
    (dict(feed_forward="relu"), r"feed_forward must be 'geglu' or 'gelu', got 'relu'"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(channel_mults=()), r"channel_mults must be a non-empty sequence of positive integers, got \(\)"),
    (dict(base_channels=0), r"UNetConfig: base_channels must be a positive integer, got 0"),
    # the wrong type is one clear ValueError too, never a TypeError from deep inside
    (dict(channel_mults=2), r"channel_mults must be a sequence of positive integers, got 2"),
    (dict(channel_mults="12"), r"channel_mults must be a sequence of positive integers, got '12'"),
    (dict(channel_mults=(1, 2.5, 2)), r"channel_mults must be a non-empty sequence of positive integers"),
    (dict(attention_levels=2), r"attention_levels must be a sequence of level indices, got 2"),
    (dict(attention_levels=("2",)), r"attention_levels \('2',\) must be level indices in 0\.\.2"),
    (dict(base_channels="64"), r"base_channels must be a positive integer, got '64'"),
    (dict(num_heads=True), r"num_heads must be a positive integer, got True"),
    (dict(context_dim=0.5), r"context_dim must be a positive integer, got 0.5"),
    (dict(dropout="0.1"), r"dropout must be in \[0, 1\), got '0.1'"),
    (dict(mid_attention="yes"), r"mid_attention must be True or False, got 'yes'"),
])
def test_bad_config_raises_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


def _bad_call(case):
    """(model, args) for one kind of bad forward call on the tiny config (context_dim 6, factor 2)."""
    config = UNetConfig.tiny()
    x, t, context, mask = make_inputs(config)                    # float64 inputs
    model = UNet(config).to(dtype=np.float64)
    unconditional = UNet(dataclasses.replace(config, context_dim=None)).to(dtype=np.float64)
    return {
        "x_3d": (model, (x[0], t)),
        "channels": (model, (x[:, :1], t)),
        "size": (model, (x[:, :, :7], t)),
        "t_batch": (model, (x, np.array([1, 2, 3]))),
        "context_unconditional": (unconditional, (x, t, context)),
        "context_width": (model, (x, t, context[:, :, :5])),
        "context_batch": (model, (x, t, context[:1])),
        "mask_shape": (model, (x, t, context, mask[:, :2])),
        "mask_alone": (model, (x, t, None, mask)),
        "dtype": (UNet(config), (x, t)),                          # float32 parameters
    }[case]


@pytest.mark.parametrize("case, message", [
    ("x_3d", r"x must be \(B, C, H, W\), got shape \(2, 8, 8\)"),
    ("channels", r"x has 1 channels .* expected in_channels=2"),
    ("size", r"image size 7x8 is not divisible by the U-Net's total downsampling 2"),
    ("t_batch", r"t must be a scalar or have shape \(2,\) .* got shape \(3,\)"),
    ("context_unconditional", r"a context was given but this U-Net is unconditional \(context_dim=None\)"),
    ("context_width", r"context must be \(2, S, 6\), got shape \(2, 3, 5\)"),
    ("context_batch", r"context must be \(2, S, 6\), got shape \(1, 3, 6\)"),
    ("mask_shape", r"context_mask must have shape \(2, 3\) .* got \(2, 2\)"),
    ("mask_alone", r"context_mask was given without a context"),
    ("dtype", r"x has dtype float64 but the parameters are float32"),
])
def test_bad_forward_input_raises_a_clear_error(case, message):
    model, args = _bad_call(case)
    with pytest.raises(ValueError, match=message):
        model(*args)


# -- caching ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_nothing_is_cached_in_eval_mode_or_under_no_grad(mode):
    config = UNetConfig.tiny()
    model = UNet(config).to(dtype=np.float64)
    x, t, context, mask = make_inputs(config)
    model(x, t, context, mask)                           # training forward: caches everywhere
    assert len(cached_arrays(model)) > 50                # (so the scan below can see caches)
    model.zero_grad()
    model.backward(np.ones_like(x))                      # backward hands every cache back
    assert cached_arrays(model) == []
    if mode == "eval":
        model.eval()
        model(x, t, context, mask)
    else:
        with no_grad():
            model(x, t, context, mask)
    assert cached_arrays(model) == []
    with pytest.raises(RuntimeError, match="without a cached forward pass"):
        model.backward(np.ones_like(x))


def test_gradients_of_two_backward_passes_add_up():
    config = UNetConfig.tiny()
    model = randomize(UNet(config))
    x, t, context, _ = make_inputs(config)
    model(x, t, context)
    model.backward(np.ones_like(x))
    once = {name: p.grad.copy() for name, p in model.named_parameters()}
    model(x, t, context)
    model.backward(np.ones_like(x))
    assert all(np.allclose(p.grad, 2 * once[name]) for name, p in model.named_parameters())


# -- structural properties -------------------------------------------------------------------------
def test_output_is_exactly_zero_at_initialisation():
    """conv_out starts at zero (as every residual branch's last layer does): the untrained U-Net
    predicts eps = 0, and training grows the prediction from there."""
    config = UNetConfig.tiny()
    x, t, context, mask = make_inputs(config)
    y = UNet(config).eval()(x.astype(np.float32), t, context.astype(np.float32), mask)
    assert np.array_equal(y, np.zeros_like(y))


def test_blocks_start_as_the_identity_on_their_residual_path():
    config = UNetConfig.tiny()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    block = unet_transformer(8, config, rng=rng).eval()
    assert np.array_equal(block(x, rng.standard_normal((2, 3, 6)).astype(np.float32)), x)
    resblock = unet_resblock(8, 8, config, rng=rng).eval()
    assert np.array_equal(resblock(x, rng.standard_normal((2, config.time_embed_dim)).astype(np.float32)), x)


def test_each_sample_is_denoised_independently_of_the_rest_of_the_batch():
    config = UNetConfig.tiny()
    model = randomize(UNet(config)).eval()
    x, t, context, mask = make_inputs(config, batch=3)
    together = model(x, t, context, mask)
    alone = model(x[1:2], t[1:2], context[1:2], mask[1:2])
    assert np.abs(together[1:2] - alone).max() < 1e-12


def test_masked_context_tokens_do_not_change_the_output_and_real_ones_do():
    config = UNetConfig.tiny()
    model = randomize(UNet(config)).eval()
    x, t, context, mask = make_inputs(config)           # sample 0's last token is padding
    y = model(x, t, context, mask)
    padded = context.copy()
    padded[0, -1] += 10.0
    assert np.abs(model(x, t, padded, mask) - y).max() < 1e-12
    real = context.copy()
    real[0, 0] += 1.0
    assert np.abs(model(x, t, real, mask) - y)[0].max() > 1e-3


def test_timestep_changes_the_output_and_a_scalar_t_means_the_whole_batch():
    config = UNetConfig.tiny()
    model = randomize(UNet(config)).eval()
    x, _, context, _ = make_inputs(config)
    y = model(x, 100, context)
    assert np.array_equal(y, model(x, np.array([100, 100]), context))
    assert np.abs(model(x, 900, context) - y).max() > 1e-3


# -- recorded reference numbers (from the PyTorch twin; CI runs this without torch) --------------------
def deterministic_tiny():
    """The tiny U-Net with parameters and inputs that depend on nothing but their shapes and
    positions (no random generator), so the recorded output below cannot drift with an init change."""
    config = UNetConfig.tiny()
    model = UNet(config)
    for i, (name, p) in enumerate(model.named_parameters()):
        fan_in = int(np.prod(p.shape[1:])) if p.data.ndim >= 2 else 1
        wave = np.sin(0.7 * np.arange(p.data.size) + i).reshape(p.shape)
        p.data = (1.0 + 0.1 * wave) if _NORM_WEIGHT.search(name) else wave / np.sqrt(fan_in)
    x = np.cos(0.3 * np.arange(2 * 2 * 8 * 8)).reshape(2, 2, 8, 8)
    context = np.sin(0.5 * np.arange(2 * 3 * 6)).reshape(2, 3, 6)
    mask = np.array([[True, True, False], [True, True, True]])
    return model, (x, np.array([3, 700]), context, mask)


# y[:, :, 0, :3] and sum|y| of deterministic_tiny() in eval mode, computed by tests/torch_twins.UNetTwin
# in float64 (minidiff agreed with it to 5e-16 relative when they were recorded)
RECORDED_TINY_OUTPUT = {
    "corner": [-0.5594509138931522, -0.10477097876160715, 0.20217940577082202, 0.0655532816863772,
               0.48641585886243854, 0.8288396909341639, -0.2365386700052276, 0.24149177142873893,
               0.41867427312816025, 0.3950037311285167, 0.8667598488437834, 1.0922470782141833],
    "abs_sum": 332.9876295547384,
}


def test_tiny_unet_output_matches_the_recorded_pytorch_values():
    model, inputs = deterministic_tiny()
    y = model.eval()(*inputs)
    recorded = np.array(RECORDED_TINY_OUTPUT["corner"])
    assert np.abs(y[:, :, 0, :3].reshape(-1) - recorded).max() < 1e-9
    assert abs(float(np.abs(y).sum()) - RECORDED_TINY_OUTPUT["abs_sum"]) < 1e-8


# -- the PyTorch twin ------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [UNetConfig.tiny(), UNCONDITIONAL_3_LEVELS], ids=["tiny", "unconditional"])
def test_unet_matches_pytorch_twin_forward_and_every_gradient(config):
    torch = pytest.importorskip("torch")
    from minidiff.bench.twins import make_unet_twin, twin_grads

    model = randomize(UNet(config))
    twin = make_unet_twin(config, model.state_dict(), dtype=torch.float64)
    assert sum(p.numel() for p in twin.parameters()) == model.num_parameters()
    x, t, context, mask = make_inputs(config)
    dout = np.random.default_rng(5).standard_normal((2, config.out_channels, config.image_size, config.image_size))

    y = model(x, t, context, mask)
    dx, dcontext = model.backward(dout)

    x_t = torch.tensor(x, requires_grad=True)
    context_t = None if context is None else torch.tensor(context, requires_grad=True)
    mask_t = None if mask is None else torch.tensor(mask)
    y_t = twin(x_t, torch.tensor(t), context_t, mask_t)
    y_t.backward(torch.tensor(dout))

    errors = {"output": relative_error(y, y_t.detach().numpy()), "dx": relative_error(dx, x_t.grad.numpy())}
    if context is not None:
        errors["dcontext"] = relative_error(dcontext, context_t.grad.numpy())
    reference = twin_grads(twin)
    errors.update({name: relative_error(p.grad, reference[name]) for name, p in model.named_parameters()})
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-10, f"worst: {worst} rel err {errors[worst]:.2e}"


def test_unet_matches_diffusers_unet2dconditionmodel_on_the_same_weights():
    """Same weights in diffusers' Stable Diffusion U-Net give the same output: the architecture is SD's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from minidiff.bench.twins import diffusers_unet_from_minidiff

    config = dataclasses.replace(UNetConfig.tiny(), ff_mult=4)      # diffusers fixes the GEGLU width at 4
    model = randomize(UNet(config)).eval()
    reference = diffusers_unet_from_minidiff(config, model.state_dict(), dtype=torch.float64)
    x, t, context, mask = make_inputs(config)
    y = model(x, t, context, mask)
    with torch.no_grad():
        y_ref = reference(torch.tensor(x), torch.tensor(t), encoder_hidden_states=torch.tensor(context),
                          encoder_attention_mask=torch.tensor(mask)).sample.numpy()
    # diffusers computes the sinusoidal time embedding in float32 whatever the model's dtype,
    # which bounds the agreement at ~1e-7; an architectural difference would show as O(1)
    assert relative_error(y, y_ref) < 1e-6
