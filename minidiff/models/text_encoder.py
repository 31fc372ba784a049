"""The text encoder: a small transformer that turns token ids into context vectors.

Stable Diffusion reads its prompt through the text tower of CLIP. minidiff builds the same kind of
tower, only smaller, and pretrains it contrastively against images in ``clip.py``:

    x_0 = E_tok[ids] + P[:L]                             token + learned position embeddings (B, L, W)
    x_l = x_{l-1} + Attn(LN(x_{l-1}), causal & pad mask)  pre-LN self-attention          } N blocks
    x_l = x_l + MLP(LN(x_l)),  MLP(h) = W_2 GELU(W_1 h)    pre-LN feed-forward            }
    states = LN_final(x_N)                                (B, L, W)  -> cross-attention in the U-Net
    pooled = states[b, end_b]                             (B, W)     -> the contrastive loss (CLIP)

Why a causal mask? CLIP's text tower is a GPT-style transformer: token i may look only at tokens
0..i. Each state then summarises the prompt *up to* that token, and the state at the end token has
seen the whole prompt, which is why it serves as the sentence embedding ("pooled"). Stable
Diffusion kept this mask when it reused CLIP, so we do too. The key-padding mask is combined with
it (a query never attends to a pad key); with right padding the causal mask already hides the
pads from every real token, so real tokens' states do not depend on padding at all.

Why pre-LN? Normalising the *input* of each sub-layer (x + f(LN(x))) leaves a clean identity path
from the embeddings to the output: gradients reach the early layers unscaled, and the model trains
without a learning-rate warmup dance. The last LayerNorm then puts the residual stream on a common
scale before anyone reads it.

What are the states for? The U-Net's cross-attention layers use all L states as keys and values
(queries come from image positions), so every word can steer the pixels it matters to. The pooled
vector is only used to train the encoder (and to measure retrieval).

Read beside: ``minidiff/models/blocks.py`` (TransformerBlock and FeedForward, shared with the U-Net),
``minidiff/nn/layers.py`` (Linear, LayerNorm, GELU, Embedding, MultiHeadAttention),
``minidiff/models/tokenizer.py`` (where ids and masks come from), ``minidiff/models/clip.py``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int
from ..nn.layers import Embedding, LayerNorm
from ..nn.module import Module, Parameter
from .blocks import CLIP_NAMES, TransformerBlock


@dataclass
class TextEncoderConfig:
    """Sizes of the text transformer. ``vocab_size`` must match the tokenizer's."""

    vocab_size: int = 384           # 259 (3 specials + 256 bytes) + 125 merges: on shapes captions BPE
                                    # runs out of pairs there, and every caption word is one token
    max_length: int = 24            # longest token sequence, start and end tokens included
    width: int = 128                # W: size of every token state
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4              # MLP hidden size = mlp_ratio * width
    gelu_approximate: str = "none"  # "none" (erf) or "tanh"; CLIP itself used x * sigmoid(1.702 x)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "max_length", "width", "num_layers", "num_heads", "mlp_ratio"):
            setattr(self, name, positive_int("TextEncoderConfig", name, getattr(self, name)))
        if self.width % self.num_heads:
            raise ValueError(f"TextEncoderConfig: width={self.width} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"TextEncoderConfig: gelu_approximate must be 'none' or 'tanh', "
                             f"got {self.gelu_approximate!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"TextEncoderConfig: layer_norm_eps must be a positive number, got {eps!r}")

    @classmethod
    def tiny(cls, vocab_size: int = 32) -> "TextEncoderConfig":
        """For gradient checks: two blocks of width 16, sequences of up to 8 tokens."""
        return cls(vocab_size=vocab_size, max_length=8, width=16, num_layers=2, num_heads=2, mlp_ratio=2)

    @classmethod
    def quick(cls, vocab_size: int = 384) -> "TextEncoderConfig":
        """For the CPU lesson: two blocks of width 64."""
        return cls(vocab_size=vocab_size, width=64, num_layers=2, num_heads=4)

    @classmethod
    def shipped(cls, vocab_size: int = 384) -> "TextEncoderConfig":
        """The pretrained model: four blocks of width 128, four heads (the defaults)."""
        return cls(vocab_size=vocab_size)


# -- masks ---------------------------------------------------------------------------------------
def causal_mask(length: int, xp=np):
    """(L, L) bool, True where query i may attend to key j, i.e. j <= i (lower triangle)."""
    return xp.tril(xp.ones((length, length), dtype=bool))


def attention_mask(mask):
    """Combine the causal mask with the key-padding mask.

    mask: (B, L) bool, True = real token  ->  (B, 1, L, L): query i may attend to key j iff
    j <= i and token j is real (broadcast over heads)."""
    xp = get_array_module(mask)
    L = mask.shape[1]
    return causal_mask(L, xp)[None, None] & mask[:, None, None, :]


def end_positions(mask):
    """Index of each sequence's end token: the last real position, sum_l mask[b, l] - 1  -> (B,).

    The tokenizer writes  start, tokens..., end, pad, pad ...  so the last real token is the end
    token (also after truncation, which keeps the end token)."""
    return mask.sum(axis=1) - 1


# -- the blocks ----------------------------------------------------------------------------------
def text_transformer(config: TextEncoderConfig, rng=None) -> TransformerBlock:
    """One pre-LN block, h = x + Attn(LN_1(x), mask);  out = h + MLP(LN_2(h)), MLP(h) = W_2 GELU(W_1 h),
    with CLIP's layer names (layer_norm1, self_attn, layer_norm2, mlp.fc1, mlp.fc2)."""
    W = config.width
    return TransformerBlock(W, config.num_heads, config.mlp_ratio * W, gated_ff=False,
                            gelu_approximate=config.gelu_approximate, eps=config.layer_norm_eps,
                            attention_bias=True, names=CLIP_NAMES, rng=rng)


# -- the encoder ---------------------------------------------------------------------------------
class TextEncoder(Module):
    """Token ids (B, L) and mask (B, L) -> states (B, L, W) and pooled (B, W).

    Initialisation as in CLIP: token embeddings N(0, 0.02^2), position embeddings N(0, 0.01^2),
    linear layers PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    def __init__(self, config: TextEncoderConfig, seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        W = config.width
        self.token_embedding = Embedding(config.vocab_size, W, rng=rng)
        self.token_embedding.weight.data *= np.float32(0.02)           # N(0, 1) -> N(0, 0.02^2)
        self.position_embedding = Parameter((0.01 * rng.standard_normal((config.max_length, W)))
                                            .astype(np.float32))
        self.blocks = [text_transformer(config, rng=rng) for _ in range(config.num_layers)]
        self.final_layer_norm = LayerNorm(W, eps=config.layer_norm_eps)
        self._cache = None

    def check_inputs(self, ids, mask):
        """Validate ids and mask; return them on the parameters' device (ids int64, mask bool)."""
        c = self.config
        ids_shape = tuple(getattr(ids, "shape", ()))
        mask_shape = tuple(getattr(mask, "shape", ()))
        if len(ids_shape) != 2:
            raise ValueError(f"TextEncoder: ids must be a (batch, length) array, got shape {ids_shape}")
        if ids_shape != mask_shape:
            raise ValueError(f"TextEncoder: ids of shape {ids_shape} and mask of shape {mask_shape} "
                             "must have the same shape")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"TextEncoder: ids must be integers, got dtype {ids.dtype}")
        if mask.dtype != np.bool_:
            raise ValueError(f"TextEncoder: mask must be bool (True = real token), got dtype {mask.dtype}")
        B, L = ids_shape
        if B < 1 or L < 1:
            raise ValueError(f"TextEncoder: ids must hold at least one token per sequence, got shape {ids_shape}")
        if L > c.max_length:
            raise ValueError(f"TextEncoder: sequence length {L} exceeds max_length={c.max_length}")
        # checked where the arrays live (host ids cost no device sync; device ids one sync for all
        # checks together), then moved beside the weights
        out_of_vocabulary = (ids < 0) | (ids >= c.vocab_size)
        no_first_token = ~mask[:, 0]
        real_after_pad = mask[:, 1:] & ~mask[:, :-1]
        if bool(out_of_vocabulary.any() | no_first_token.any() | real_after_pad.any()):
            if bool(out_of_vocabulary.any()):
                bad = int(ids[out_of_vocabulary][0])
                raise ValueError(f"TextEncoder: token id {bad} is outside the vocabulary [0, {c.vocab_size})")
            if bool(no_first_token.any()):
                raise ValueError("TextEncoder: every sequence needs a real first token (mask[:, 0] all True)")
            raise ValueError("TextEncoder: mask must be right-padded (True ... True False ... False); "
                             "found a real token after a pad")
        xp = get_array_module(self.position_embedding.data)
        return xp.asarray(ids).astype(xp.int64, copy=False), xp.asarray(mask)

    def forward(self, ids, mask):
        ids, mask = self.check_inputs(ids, mask)
        xp = get_array_module(ids)
        B, L = ids.shape
        # x_0 = E_tok[ids] + P[:L]                                      (B, L, W)
        x = self.token_embedding(ids) + self.position_embedding.data[:L]
        # query i may attend to key j iff j <= i and j is real          (B, 1, L, L)
        attn_mask = attention_mask(mask)
        for block in self.blocks:
            x = block(x, mask=attn_mask)
        # states = LN_final(x_N)                                        (B, L, W)
        states = self.final_layer_norm(x)
        # pooled = states[b, end_b]                                     (B, W)
        end = end_positions(mask)
        pooled = states[xp.arange(B), end]
        self._cache = (states.shape, states.dtype, end) if self.caching else None
        return states, pooled

    def backward(self, d_states, d_pooled=None):
        """d_states (B, L, W) or None, d_pooled (B, W) or None -> None (ids are integers).

        Adds into every parameter's grad. ``backward((d_states, d_pooled))`` works too: one
        gradient per output of forward, as ``nn.gradcheck.check_module`` passes them."""
        if isinstance(d_states, tuple):
            d_states, d_pooled = d_states
        if self._cache is None:
            raise RuntimeError("TextEncoder.backward called without a cached forward pass "
                               "(run forward in training mode with gradients enabled)")
        shape, dtype, end = self._cache
        self._cache = None
        xp = get_array_module(end)
        B, L, _ = shape
        d = xp.zeros(shape, dtype) if d_states is None else xp.array(d_states, dtype=dtype, copy=True)
        if d_pooled is not None:
            # forward was: pooled = states[b, end_b]  -> scatter back to the end positions
            d[xp.arange(B), end] += d_pooled
        dx = self.final_layer_norm.backward(d)
        for block in reversed(self.blocks):
            dx, _ = block.backward(dx)              # no cross-attention: no context gradient
        # forward was: x_0 = E_tok[ids] + P[:L]   -> P[l] collects the gradient of every sequence
        d_position = xp.zeros_like(self.position_embedding.data)
        d_position[:L] = dx.sum(axis=0)
        self.position_embedding.accumulate(d_position)
        self.token_embedding.backward(dx)
        return None


if __name__ == "__main__":          # python -m minidiff.models.text_encoder
    config = TextEncoderConfig.tiny()
    encoder = TextEncoder(config, seed=0)
    ids = np.array([[1, 5, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0]])
    mask = ids != 0
    mask[:, 0] = True
    states, pooled = encoder(ids, mask)
    print(f"{encoder.num_parameters()} parameters; ids {ids.shape} -> states {states.shape}, "
          f"pooled {pooled.shape} taken at end positions {end_positions(mask).tolist()}")
    print("attention mask of sequence 1 (query rows, key columns):")
    print(attention_mask(mask)[1, 0].astype(int))
