"""mini-CLIP: pretrain the text encoder by matching captions to images.

A batch holds B images and their B captions. Two encoders map them into one embedding space,

    u_i = W_img ImageEncoder(image_i)       v_j = W_txt TextEncoder(caption_j).pooled     (B, D)
    u_hat = u / ||u||,  v_hat = v / ||v||   (unit vectors: the score is a cosine similarity)
    logits_ij = s * u_hat_i . v_hat_j,      s = exp(min(logit_scale, log 100))             (B, B)

and the symmetric InfoNCE loss asks every image to pick its own caption out of the batch, and
every caption its own image (a softmax cross-entropy along rows and along columns):

    L = 1/2 [ CE_rows(logits, T_img->txt) + CE_cols(logits, T_txt->img) ]

The temperature 1/s is learned (``logit_scale`` starts at log(1/0.07), as in CLIP) and capped at
s = 100 so that the logits cannot grow without bound.

Duplicate captions. Shapes captions describe attributes, and may leave some out ("a red circle"
fits every red circle). So a batch can hold a caption that describes several of its images
equally well. Standard CLIP would call all but one of them negatives, i.e. label noise that
pushes apart things that are, as far as the text can tell, the same. We instead give the loss
the set of *all* correct pairs: ``positives[i, j]`` is True when caption j describes image i
(every attribute it names agrees with image i's labels, see ``caption_matches``), and the target
of each row is uniform over its positives:

    T_img->txt[i, j] = positives[i, j] / sum_j' positives[i, j']    (and likewise per column)

With ``positives = I`` this is exactly CLIP's loss. Retrieval is scored the same way: a caption's
top-1 image is a hit when the caption describes it (``evaluate.retrieval_accuracy``).

Everything has a hand-written backward, including the normalisation and the temperature:

    dL/dlogits = [ (softmax_rows(logits) - T_img->txt) + (softmax_cols(logits) - T_txt->img) ] / 2B
    dL/ds      = sum_ij dL/dlogits_ij * (u_hat_i . v_hat_j),   dL/dlogit_scale = s dL/ds (0 when capped)
    dL/du_hat  = s dL/dlogits  v_hat,   dL/dv_hat = s dL/dlogits^T u_hat
    dL/du      = (dL/du_hat - u_hat (u_hat . dL/du_hat)) / ||u||        (projection off u_hat)

Read beside: ``minidiff/models/text_encoder.py``, ``minidiff/nn/layers.py``,
``minidiff/datasets/captions.py`` (which caption fits which image), ``minidiff/train/jobs.py`` (the
``clip`` job: the one training loop trains it), ``lessons/09_text_encoder.py``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_array_module
from ..nn import functional as F
from ..nn.layers import Conv2d, GroupNorm, Linear, SiLU
from ..nn.module import Module, Parameter, no_grad
from ..checks import positive_int, positive_ints
from .text_encoder import TextEncoder, TextEncoderConfig

# -- configuration -------------------------------------------------------------------------------
def _text_config(text) -> TextEncoderConfig:
    """CLIPConfig.text as a TextEncoderConfig: one already, or a dict of its settings (a
    checkpoint's JSON). Anything else, an unknown setting or a bad value is a ValueError naming
    the field, so a damaged clip.npz is one clear CheckpointError."""
    if isinstance(text, TextEncoderConfig):
        return text
    if not isinstance(text, dict):
        raise ValueError(f"CLIPConfig: text must be a TextEncoderConfig or a dict of its settings, "
                         f"got {type(text).__name__} ({text!r:.60})")
    names = {f.name for f in dataclasses.fields(TextEncoderConfig)}
    unknown = sorted(repr(k) for k in text if k not in names)
    if unknown:
        raise ValueError(f"CLIPConfig: text has unknown settings {', '.join(unknown)} "
                         f"(TextEncoderConfig has {', '.join(sorted(names))})")
    try:
        return TextEncoderConfig(**text)
    except ValueError as exc:
        raise ValueError(f"CLIPConfig: text: {exc}") from None


@dataclass
class CLIPConfig:
    """Sizes of mini-CLIP. ``channels[0]`` is the stem's width; each later entry is one stride-2 stage."""

    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_size: int = 32
    in_channels: int = 3
    channels: tuple = (32, 64, 128, 128)
    norm_groups: int = 8
    coord_channels: bool = True     # append (x, y) coordinate planes to the image (see ImageEncoder)
    pool_grid: int = 1              # average-pool the last feature map to g x g cells (1 = global pool)
    embed_dim: int = 64
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)

    def __post_init__(self):
        self.text = _text_config(self.text)
        for name in ("image_size", "in_channels", "norm_groups", "embed_dim"):
            setattr(self, name, positive_int("CLIPConfig", name, getattr(self, name)))
        self.channels = positive_ints("CLIPConfig", "channels", self.channels)
        for name in ("logit_scale_init", "logit_scale_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"CLIPConfig: {name} must be a finite number, got {value!r}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"CLIPConfig: channels {bad} do not divide into norm_groups={self.norm_groups}")
        smallest = self.image_size // 2 ** (len(self.channels) - 1)
        if self.image_size % 2 ** (len(self.channels) - 1) or smallest < 1:
            raise ValueError(f"CLIPConfig: image_size={self.image_size} cannot be halved "
                             f"{len(self.channels) - 1} times")
        self.pool_grid = positive_int("CLIPConfig", "pool_grid", self.pool_grid)
        if smallest % self.pool_grid:
            raise ValueError(f"CLIPConfig: the last feature map is {smallest}x{smallest}, which does not pool "
                             f"to a {self.pool_grid}x{self.pool_grid} grid")

    @property
    def image_features(self) -> int:
        """Width of the image tower's output: channels[-1] for each of the g x g pooled cells."""
        return self.channels[-1] * self.pool_grid ** 2

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        """Inverse of ``dataclasses.asdict`` (e.g. a checkpoint's config)."""
        return cls(**d)

    @classmethod
    def tiny(cls, vocab_size: int = 32) -> "CLIPConfig":
        """For gradient checks: 8x8 images, two small stages, a two-block text encoder."""
        return cls(text=TextEncoderConfig.tiny(vocab_size), image_size=8, channels=(4, 8),
                   norm_groups=2, embed_dim=8)

    @classmethod
    def quick(cls, vocab_size: int = 384) -> "CLIPConfig":
        """For the CPU lesson (a few minutes on two cores)."""
        return cls(text=TextEncoderConfig.quick(vocab_size), channels=(16, 32, 64, 64))

    @classmethod
    def shipped(cls, vocab_size: int = 384) -> "CLIPConfig":
        """The pretrained model whose text encoder conditions the U-Net (the defaults)."""
        return cls(text=TextEncoderConfig.shipped(vocab_size))

    @classmethod
    def relations(cls, vocab_size: int = 384) -> "CLIPConfig":
        """The shipped model that knows word order: the image tower keeps a 2 x 2 grid of where
        things are, so "above" and "below" differ in the image embedding too (see ImageEncoder)."""
        return cls(text=TextEncoderConfig.shipped(vocab_size), pool_grid=2)


# -- the image tower -----------------------------------------------------------------------------
class ConvNormAct(Module):
    """y = SiLU(GroupNorm(Conv3x3(x)))   with stride 1 (stem) or 2 (halves H and W)."""

    def __init__(self, in_channels, out_channels, stride, num_groups, rng=None):
        self.conv = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, rng=rng)
        self.norm = GroupNorm(num_groups, out_channels)
        self.act = SiLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))

    def backward(self, d_out):
        return self.conv.backward(self.norm.backward(self.act.backward(d_out)))


def coordinate_planes(batch, size, xp=np, dtype=np.float32):
    """(B, 2, S, S): x and y of every pixel centre, scaled to [-1, 1]."""
    c = ((xp.arange(size, dtype=dtype) + 0.5) / size * 2 - 1).astype(dtype)
    planes = xp.stack([xp.broadcast_to(c[None, :], (size, size)), xp.broadcast_to(c[:, None], (size, size))])
    return xp.broadcast_to(planes[None], (batch, 2, size, size))


class ImageEncoder(Module):
    """Images (B, C, S, S) -> features (B, channels[-1] * g^2).

    A stride-1 stem, then stride-2 stages (each ConvNormAct), then an average over H, W.
    Averaging throws away *where* a feature fired, yet captions say "on the left" and "above".
    So, as in CoordConv, two fixed planes holding each pixel's x and y are appended to the input:
    a filter can then respond to "red AND left half", and that survives the average. A relation
    needs more: "red above blue" and "blue above red" can light the same "red" and "blue"
    filters in the same halves. ``pool_grid = g > 1`` averages over a coarse g x g grid of cells
    instead and keeps the cells apart (their features side by side), so the embedding says which
    object sits in which cell.
    """

    def __init__(self, config: CLIPConfig, rng=None):
        self.coord_channels = config.coord_channels
        self.pool_grid = config.pool_grid
        c_in = config.in_channels + (2 if config.coord_channels else 0)
        widths = config.channels
        self.stem = ConvNormAct(c_in, widths[0], 1, config.norm_groups, rng=rng)
        self.stages = [ConvNormAct(a, b, 2, config.norm_groups, rng=rng) for a, b in zip(widths, widths[1:])]
        self._cache = None

    def forward(self, images):
        xp = get_array_module(images)
        B, C, H, W = images.shape
        x = images
        if self.coord_channels:
            # (B, C, S, S) -> (B, C + 2, S, S)
            x = xp.concatenate([images, coordinate_planes(B, H, xp, images.dtype)], axis=1)
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)                                  # (B, c, S / 2^k, S / 2^k)
        self._cache = (h.shape, C) if self.caching else None
        B, c, h_size, w_size = h.shape
        g = self.pool_grid
        # average over each of the g x g cells: (B, c, H, W) -> (B, c, g, g) -> (B, c g g)
        return h.reshape(B, c, g, h_size // g, g, w_size // g).mean(axis=(3, 5)).reshape(B, c * g * g)

    def backward(self, d_features):
        shape, C = self._cache
        self._cache = None
        xp = get_array_module(d_features)
        B, c, h_size, w_size = shape
        g = self.pool_grid
        # forward was: cell means -> every position of a cell gets d_f / (cell size)
        d_cells = (d_features / ((h_size // g) * (w_size // g))).reshape(B, c, g, 1, g, 1)
        dh = xp.ascontiguousarray(xp.broadcast_to(d_cells, (B, c, g, h_size // g, g, w_size // g))
                                  .reshape(shape))
        for stage in reversed(self.stages):
            dh = stage.backward(dh)
        dx = self.stem.backward(dh)
        return dx[:, :C]                                  # the coordinate planes are constants


# -- the contrastive loss ------------------------------------------------------------------------
def l2_normalize(x, eps=1e-12):
    """x_hat = x / max(||x||, eps) along the last axis.  (B, D) -> (B, D)

    (eps only guards a zero vector; backward assumes ||x|| > eps, as any trained embedding has.)"""
    xp = get_array_module(x)
    norm = xp.maximum(xp.sqrt((x * x).sum(axis=-1, keepdims=True)), eps)   # ||x||, (B, 1)
    x_hat = x / norm
    return x_hat, (x_hat, norm)


def l2_normalize_backward(d_x_hat, cache):
    """d x_hat / dx = (I - x_hat x_hat^T) / ||x||:  remove the part along x_hat, divide by the norm."""
    x_hat, norm = cache
    return (d_x_hat - x_hat * (d_x_hat * x_hat).sum(axis=-1, keepdims=True)) / norm


def contrastive_loss(image_embeds, text_embeds, logit_scale, positives=None, logit_scale_max=math.log(100.0)):
    """Symmetric InfoNCE between L2-normalised embeddings, optionally with extra negative captions.

    image_embeds (B, D), text_embeds (M, D) with M >= B: the *un-normalised* projections u and v.
    Texts 0..B-1 are the images' own captions; texts B..M-1 are extra captions (hard negatives:
    the same words in another order), which compete in every image's softmax over captions but
    have no softmax of their own over images.
    logit_scale: 0-d array (log of the inverse temperature). positives: (B, M) bool, [i, j] True
    when caption j describes image i; its first B columns must have a True diagonal (None: the
    identity, CLIP's one-to-one pairing, M = B). Returns (loss (0-d array), logits (B, M), cache).
    """
    xp = get_array_module(image_embeds)
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1] \
            or text_embeds.shape[0] < image_embeds.shape[0]:
        raise ValueError(f"contrastive_loss: image_embeds {tuple(image_embeds.shape)} must be (B, D) and "
                         f"text_embeds {tuple(text_embeds.shape)} (M, D) with M >= B")
    B, M = image_embeds.shape[0], text_embeds.shape[0]
    if positives is None:
        if M != B:
            raise ValueError(f"contrastive_loss: {M - B} extra captions need a ({B}, {M}) positives matrix")
        positives = xp.eye(B, dtype=bool)
    # validated where it lives (a host matrix costs no device sync), then moved beside the embeddings
    if tuple(positives.shape) != (B, M) or not bool(positives[:, :B].diagonal().all()):
        raise ValueError(f"contrastive_loss: positives must be a ({B}, {M}) bool matrix whose first {B} "
                         f"columns have a True diagonal (every caption describes its own image), "
                         f"got shape {tuple(positives.shape)}")
    positives = xp.asarray(positives, dtype=bool)
    dtype = image_embeds.dtype
    u_hat, u_cache = l2_normalize(image_embeds)                      # (B, D)
    v_hat, v_cache = l2_normalize(text_embeds)                       # (M, D)
    # s = exp(min(logit_scale, log 100))
    below_cap = (logit_scale <= logit_scale_max).astype(dtype)       # 1, or 0 once capped
    s = xp.exp(xp.minimum(logit_scale, logit_scale_max)).astype(dtype)
    # cos_ij = u_hat_i . v_hat_j,  logits = s cos                    (B_img, M_txt)
    cosine = u_hat @ v_hat.T
    logits = s * cosine
    # targets: uniform over each row's (image -> captions) and each own caption's (caption -> images) positives
    p = positives.astype(dtype)
    t_rows = p / p.sum(axis=1, keepdims=True)                        # (B, M)
    t_cols = p[:, :B] / p[:, :B].sum(axis=0, keepdims=True)          # (B, B): the own captions only
    # CE_rows = -1/B sum_ij T_rows log softmax_rows;  CE_cols likewise down the own captions' columns
    log_p_rows, (p_rows, _) = F.log_softmax(logits, axis=1)          # each image over all M captions
    log_p_cols, (p_cols, _) = F.log_softmax(logits[:, :B], axis=0)   # each own caption over the B images
    loss_rows = -(t_rows * log_p_rows).sum() / B
    loss_cols = -(t_cols * log_p_cols).sum() / B
    loss = 0.5 * (loss_rows + loss_cols)
    cache = (u_cache, v_cache, s, below_cap, cosine, p_rows, p_cols, t_rows, t_cols)
    return loss, logits, cache


def contrastive_loss_backward(d_loss, cache):
    """-> (d_image_embeds, d_text_embeds, d_logit_scale), see the module docstring for the math."""
    u_cache, v_cache, s, below_cap, cosine, p_rows, p_cols, t_rows, t_cols = cache
    B = cosine.shape[0]
    # forward was: loss = (CE_rows + CE_cols) / 2;  d CE / d logits = softmax - targets (each target row sums to 1)
    d_logits = (p_rows - t_rows).copy()                              # (B, M): every caption column
    d_logits[:, :B] += p_cols - t_cols                               # the own captions' column softmax
    d_logits *= d_loss / (2 * B)
    # forward was: logits = s cos,  s = exp(logit_scale)  -> ds/dlogit_scale = s (0 above the cap)
    d_logit_scale = (d_logits * cosine).sum() * s * below_cap
    d_cosine = s * d_logits
    # forward was: cos = u_hat v_hat^T
    u_hat, v_hat = u_cache[0], v_cache[0]
    d_u_hat = d_cosine @ v_hat                                       # (B, D)
    d_v_hat = d_cosine.T @ u_hat                                     # (M, D)
    d_u = l2_normalize_backward(d_u_hat, u_cache)
    d_v = l2_normalize_backward(d_v_hat, v_cache)
    return d_u, d_v, d_logit_scale


# -- the model -----------------------------------------------------------------------------------
class MiniCLIP(Module):
    """Image tower + text tower + two linear projections into a shared D-dimensional space.

    ``forward(images, ids, mask, positives=None) -> (loss, logits)``; ``backward()`` fills every
    parameter's grad (the text encoder's included) from the loss of the last forward.
    """

    def __init__(self, config: CLIPConfig, seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        self.image_encoder = ImageEncoder(config, rng=rng)
        self.text_encoder = TextEncoder(config.text, seed=int(rng.integers(2 ** 31)))
        self.image_projection = Linear(config.image_features, config.embed_dim, bias=False, rng=rng)
        self.text_projection = Linear(config.text.width, config.embed_dim, bias=False, rng=rng)
        self.logit_scale = Parameter(np.asarray(config.logit_scale_init, np.float32))
        self._cache = None

    def _check_images(self, images):
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if getattr(images, "ndim", 0) != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"MiniCLIP: images must be (B, {c.in_channels}, {c.image_size}, {c.image_size}), "
                             f"got shape {tuple(getattr(images, 'shape', ()))}")
        xp = get_array_module(self.logit_scale.data)
        return xp.asarray(images, dtype=self.logit_scale.data.dtype)

    def forward(self, images, ids, mask, positives=None):
        images = self._check_images(images)
        if np.shape(ids)[0] < images.shape[0]:
            raise ValueError(f"MiniCLIP: {images.shape[0]} images but {np.shape(ids)[0]} captions; "
                             "a contrastive batch pairs them one to one (extra captions come after)")
        # u = W_img f(image),  v = W_txt pooled(caption)                 (B, D)
        u = self.image_projection(self.image_encoder(images))
        _, pooled = self.text_encoder(ids, mask)
        v = self.text_projection(pooled)
        loss, logits, cache = contrastive_loss(u, v, self.logit_scale.data, positives,
                                               self.config.logit_scale_max)
        self._cache = cache if self.caching else None
        return loss, logits

    def backward(self, d_loss=1.0):
        """Backpropagate the last loss into every parameter's grad; returns d loss / d images."""
        if self._cache is None:
            raise RuntimeError("MiniCLIP.backward called without a cached forward pass "
                               "(run forward in training mode with gradients enabled)")
        cache, self._cache = self._cache, None
        d_u, d_v, d_logit_scale = contrastive_loss_backward(d_loss, cache)
        self.logit_scale.accumulate(d_logit_scale)
        # forward was: v = W_txt pooled  ->  pooled = states[b, end_b]
        self.text_encoder.backward(None, self.text_projection.backward(d_v))
        # forward was: u = W_img ImageEncoder(images)
        return self.image_encoder.backward(self.image_projection.backward(d_u))

    # -- inference helpers (nothing cached) --------------------------------------------------
    def encode_image(self, images):
        """(B, C, S, S) -> unit vectors (B, D)."""
        with no_grad():
            return l2_normalize(self.image_projection(self.image_encoder(self._check_images(images))))[0]

    def encode_text(self, ids, mask):
        """Token ids and mask (B, L) -> unit vectors (B, D)."""
        with no_grad():
            return l2_normalize(self.text_projection(self.text_encoder(ids, mask)[1]))[0]

    def similarity(self, images, ids, mask):
        """Cosine similarities (B_img, B_txt) between every image and every caption."""
        return self.encode_image(images) @ self.encode_text(ids, mask).T

    @property
    def temperature(self) -> float:
        """1 / s, the softmax temperature in use (a host float)."""
        return float(math.exp(-min(float(self.logit_scale.data), self.config.logit_scale_max)))


def clip_loss_and_backward(model: MiniCLIP, images, ids, mask, positives=None):
    """One forward and backward pass (gradients add into p.grad; zero them first). -> (loss, logits)"""
    loss, logits = model.forward(images, ids, mask, positives)
    model.backward(1.0)
    return loss, logits


if __name__ == "__main__":          # python -m minidiff.models.clip: a random batch through an untrained model
    config = CLIPConfig.quick()
    rng = np.random.default_rng(0)
    model = MiniCLIP(config, seed=0)
    B, L = 16, config.text.max_length
    images = rng.uniform(-1, 1, (B, 3, config.image_size, config.image_size)).astype(np.float32)
    ids = rng.integers(3, config.text.vocab_size, (B, L))
    mask = np.ones((B, L), dtype=bool)
    loss, logits = clip_loss_and_backward(model, images, ids, mask)
    print(f"MiniCLIP.quick: {model.num_parameters():,} parameters; a batch of {B} random pairs")
    print(f"untrained loss {float(loss):.3f} (log {B} = {math.log(B):.3f}), logits {logits.shape}, "
          f"temperature {model.temperature:.3f}, d loss / d logit_scale = {float(model.logit_scale.grad):+.4f}")
