"""PyTorch twins of minidiff's models, for the tests and the benchmarks.

A twin is an independent PyTorch implementation of the same architecture with the same
parameter names, so minidiff's ``state_dict()`` loads into it unchanged. Tests run both in
float64 on the same weights and compare outputs and every gradient; ``minidiff bench`` builds
float32 twins to time against.

    from minidiff.bench import twins
    twin = twins.make_unet_twin(config, model.state_dict())      # float64 on the CPU by default
    y = twin(x, t, context)                       # torch autograd supplies the reference gradients
    grads = twins.twin_grads(twin)                # {minidiff name: numpy gradient}

PyTorch is never a requirement of minidiff: this package imports without it, and imports torch
(through the module that holds the name) only when a twin or helper is first asked for. One
module per model: common.py (loading states, reading gradients), unet.py, text_encoder.py, vae.py.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "common": ("load_minidiff_state", "twin_grads"),
    "unet": ("timestep_sinusoid", "TimestepEmbeddingTwin", "ResBlockTwin", "AttentionTwin", "FeedForwardTwin",
             "TransformerBlockTwin", "DownsampleTwin", "UpsampleTwin", "UNetTwin", "make_unet_twin",
             "diffusers_unet_name", "diffusers_unet_from_minidiff"),
    "text_encoder": ("TextAttentionTwin", "TextBlockTwin", "TextEncoderTwin", "make_text_encoder_twin"),
    "vae": ("VAEResBlockTwin", "VAEAttnBlockTwin", "VAEDownTwin", "VAELevelTwin", "VAEMidBlockTwin", "VAETwin",
            "make_vae_twin", "diffusers_vae_name", "diffusers_vae_from_minidiff"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    """``twins.make_unet_twin`` and ``from minidiff.bench.twins import make_unet_twin``: the first
    use of a name imports its module (and with it torch)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_MODULE_OF[name]}")
    except ImportError as exc:
        if exc.name != "torch":
            raise
        raise ImportError(f"minidiff.bench.twins.{name} needs PyTorch (pip install torch); "
                          "minidiff itself does not", name="torch") from exc
    return getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
