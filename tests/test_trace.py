"""gradient_path: the chain of calls through which one parameter's gradient arrives is real code."""
import importlib

import numpy as np
import pytest

from minidiff.models.unet import UNet, UNetConfig
from minidiff.nn import fast
from minidiff.nn import functional as F
from minidiff.nn.trace import gradient_path


def _path(name):
    rng = np.random.default_rng(0)
    unet = UNet(UNetConfig.tiny(), seed=0)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    context = rng.standard_normal((2, 5, 6)).astype(np.float32)
    with fast.disabled():
        out = unet.forward(x, np.array([3, 500]), context)
        _, cache = F.mse_loss(out, x)
        return gradient_path(unet, name, lambda: unet.backward(F.mse_loss_backward(1.0, cache)))


def _resolve(hop):
    """'minidiff/nn/layers.py:Linear.backward' -> the function object (so a hop cannot name nothing)."""
    file, qualname = hop.split(":")
    target = importlib.import_module(file[:-3].replace("/", "."))
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def test_a_cross_attention_weight_gets_its_gradient_from_linear_backward_via_the_attention_layer():
    path = _path("mid_block.attentions.0.attn2.to_k.weight")
    assert path == ["minidiff/models/unet.py:UNet.backward", "minidiff/models/unet.py:MidBlock.backward",
                    "minidiff/models/blocks.py:SpatialTransformer.backward",
                    "minidiff/models/blocks.py:TransformerBlock.backward",
                    "minidiff/nn/layers.py:MultiHeadAttention.backward", "minidiff/nn/layers.py:Linear.backward",
                    "minidiff/nn/ops/linear.py:linear_backward", "minidiff/nn/module.py:Parameter.accumulate"]
    assert all(callable(_resolve(hop)) for hop in path)


def test_a_groupnorm_gamma_gets_its_gradient_from_the_norm_op():
    path = _path("down_blocks.1.resnets.0.norm1.weight")
    assert path[0] == "minidiff/models/unet.py:UNet.backward" and "minidiff/models/blocks.py:ResBlock.backward" in path
    assert path[-2].startswith("minidiff/nn/ops/norm.py:group_norm") and callable(_resolve(path[-2]))


def test_an_unknown_parameter_is_one_clear_error():
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        gradient_path(UNet(UNetConfig.tiny()), "nope", lambda: None)
