"""The text-encoder twin: minidiff.models.text_encoder.TextEncoder written in PyTorch with the same
parameter names (a pre-LN causal transformer, CLIP's text tower in small)."""
from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn

from .common import load_minidiff_state
from .unet import AttentionTwin


class TextAttentionTwin(AttentionTwin):
    """Self-attention of the text encoder: like AttentionTwin, but q, k and v have biases (as in CLIP)."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)


class TextBlockTwin(nn.Module):
    """Pre-LN block: x + Attn(LN_1(x), mask), then + MLP(LN_2(.)) with fc1 -> GELU -> fc2."""

    def __init__(self, config):
        super().__init__()
        width, eps = config.width, config.layer_norm_eps
        self.approximate = config.gelu_approximate
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = TextAttentionTwin(width, config.num_heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, config.mlp_ratio * width)
        self.mlp.fc2 = nn.Linear(config.mlp_ratio * width, width)

    def forward(self, x, mask):
        h = x + self.self_attn(self.layer_norm1(x), mask=mask)
        return h + self.mlp.fc2(TF.gelu(self.mlp.fc1(self.layer_norm2(h)), approximate=self.approximate))


class TextEncoderTwin(nn.Module):
    """minidiff.models.text_encoder.TextEncoder in PyTorch; same parameter names;
    forward(ids (B, L) int64, mask (B, L) bool) -> (states (B, L, W), pooled (B, W))."""

    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.width))
        self.blocks = nn.ModuleList(TextBlockTwin(config) for _ in range(config.num_layers))
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, ids, mask):
        B, L = ids.shape
        x = self.token_embedding(ids) + self.position_embedding[:L]
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=ids.device))
        attn_mask = causal[None, None] & mask[:, None, None, :]           # (B, 1, L, L), True = attend
        for block in self.blocks:
            x = block(x, attn_mask)
        states = self.final_layer_norm(x)
        end = mask.sum(dim=1) - 1                                         # the last real token: <end>
        return states, states[torch.arange(B, device=ids.device), end]


def make_text_encoder_twin(config, state_dict=None, dtype=torch.float64, device="cpu"):
    """A TextEncoderTwin in ``dtype`` on ``device``, loaded with ``state_dict`` (a minidiff
    ``TextEncoder.state_dict()``) when given."""
    twin = TextEncoderTwin(config).to(device=device, dtype=dtype)
    if state_dict is not None:
        load_minidiff_state(twin, state_dict)
    return twin
