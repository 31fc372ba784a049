"""LoRA (minidiff/models/lora.py): the adapter's hand-written dA, dB and dx against finite differences in
float64, the adapted U-Net equal to the base at step 0, merging equal to adapting, and the adapter file."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.models.lora import AdapterMismatch, LoRALinear, add_lora, attention_projections, merge_lora
from minidiff.zoo import load_adapter, save_adapter
from minidiff.models.unet import UNet, UNetConfig
from minidiff.nn.gradcheck import check_module
from minidiff.nn.layers import Linear
from minidiff.nn.module import Module


def tiny_unet():
    """A float64 tiny U-Net whose zero-initialised layers (conv_out, each branch's last layer) are
    made random, so no adapter hides behind a zero."""
    unet = UNet(UNetConfig.tiny(), seed=1).to(dtype=np.float64)
    rng = np.random.default_rng(0)
    for p in unet.parameters():
        if np.all(p.data == 0):
            p.data = 0.1 * rng.standard_normal(p.shape)
    return unet


def unet_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 2, 8, 8)), np.array([3.0, 500.0]), rng.standard_normal((2, 3, 6))


def randomize_B(adapters, seed=0):
    """B = 0 makes every adapter the identity; a random B makes each one matter."""
    rng = np.random.default_rng(seed)
    for layer in adapters.layers.values():
        layer.lora_B.data = 0.3 * rng.standard_normal(layer.lora_B.shape)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(0, 10 ** 6))
def test_lora_linear_gradients_match_finite_differences(n_in, n_out, rank, rows, seed):
    rng = np.random.default_rng(seed)
    base = Linear(n_in, n_out, rng=rng).to(dtype=np.float64)
    layer = LoRALinear(base, rank, alpha=2.0 * rank, rng=rng)
    layer.lora_B.data = rng.standard_normal(layer.lora_B.shape)
    report = check_module(layer, [rng.standard_normal((rows, 3, n_in))], seed=seed)
    assert report.passed(1e-6), str(report)
    assert {r.name for r in report.rows} == {"x0", "lora_A", "lora_B"}      # the base is frozen


def test_adapted_unet_equals_the_base_at_step_zero():
    unet = tiny_unet().eval()
    x, t, context = unet_inputs()
    before = unet(x, t, context)
    adapters = add_lora(unet, rank=2)
    assert np.array_equal(unet(x, t, context), before)          # B = 0: exactly the base model


def test_adapters_sit_on_every_attention_projection():
    unet = tiny_unet()
    names = [name for name, _ in attention_projections(unet)]
    assert any(".attn1.to_q" in n for n in names) and any(".attn2.to_out" in n for n in names)
    keys_before = list(unet.state_dict())
    adapters = add_lora(unet, rank=2)
    assert list(unet.state_dict()) == keys_before               # the base model's names stay the same
    assert sorted(adapters.state_dict()) == sorted(f"{n}.lora_{m}" for n in names for m in "AB")


class AdaptedUNet(Module):
    """The U-Net as a function whose parameters are the adapters alone (what the lora job trains)."""

    def __init__(self, unet, adapters):
        self.unet, self.adapters = unet, adapters

    def _children(self):
        yield "adapters", self.adapters

    def forward(self, x, context):
        return self.unet.forward(x, np.array([3.0, 500.0]), context)

    def backward(self, d_out):
        return self.unet.backward(d_out)


def test_adapter_gradients_through_the_unet_match_finite_differences():
    unet = tiny_unet()
    adapters = add_lora(unet, rank=2, seed=3)
    randomize_B(adapters)
    x, _, context = unet_inputs()
    report = check_module(AdaptedUNet(unet, adapters), [x, context], eps=3e-6, max_coords=3)
    assert report.passed(1e-5), str(report)


def test_merged_weights_give_the_adapted_output():
    unet = tiny_unet().eval()
    x, t, context = unet_inputs()
    adapters = add_lora(unet, rank=2, alpha=3.0)
    randomize_B(adapters)
    adapted = unet(x, t, context)
    merge_lora(adapters)
    assert all("forward" not in vars(layer.base) for layer in adapters.layers.values())   # detached
    np.testing.assert_allclose(unet(x, t, context), adapted, rtol=1e-10, atol=1e-12)


def test_scale_zero_is_the_base_model():
    unet = tiny_unet().eval()
    x, t, context = unet_inputs()
    before = unet(x, t, context)
    adapters = add_lora(unet, rank=2)
    randomize_B(adapters)
    assert not np.allclose(unet(x, t, context), before)
    adapters.set_scale(0.0)
    np.testing.assert_array_equal(unet(x, t, context), before)


def test_adapter_file_round_trip_and_refuses_another_model(tmp_path):
    unet = tiny_unet().eval()
    x, t, context = unet_inputs()
    adapters = add_lora(unet, rank=2)
    randomize_B(adapters)
    adapted = unet(x, t, context)
    path = save_adapter(tmp_path / "lora.npz", adapters, unet.config, base_name="tiny")
    adapters.detach()

    fresh = tiny_unet().eval()
    load_adapter(path, fresh)
    np.testing.assert_allclose(fresh(x, t, context), adapted, rtol=1e-6, atol=1e-6)

    other = UNet(dataclasses.replace(UNetConfig.tiny(), base_channels=16), seed=1)
    with pytest.raises(AdapterMismatch, match="adapter for another model: its base has base_channels=8"):
        load_adapter(path, other)
    with pytest.raises(FileNotFoundError, match="train lora"):
        load_adapter(tmp_path / "missing.npz", fresh)


def test_adapter_is_small_beside_the_shipped_unet():
    unet = UNet(UNetConfig.latent8())
    adapters = add_lora(unet, rank=4)
    share = adapters.num_parameters() / unet.num_parameters()
    assert share < 0.05, share
