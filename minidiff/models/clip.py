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
top-1 image is a hit when the caption describes it (``retrieval_accuracy``).

Everything has a hand-written backward, including the normalisation and the temperature:

    dL/dlogits = [ (softmax_rows(logits) - T_img->txt) + (softmax_cols(logits) - T_txt->img) ] / 2B
    dL/ds      = sum_ij dL/dlogits_ij * (u_hat_i . v_hat_j),   dL/dlogit_scale = s dL/ds (0 when capped)
    dL/du_hat  = s dL/dlogits  v_hat,   dL/dv_hat = s dL/dlogits^T u_hat
    dL/du      = (dL/du_hat - u_hat (u_hat . dL/du_hat)) / ||u||        (projection off u_hat)

Read beside: ``minidiff/models/text_encoder.py``, ``minidiff/nn/layers.py``,
``minidiff/datasets/shapes.py`` (captions and labels), ``lessons/09_text_encoder.py``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..nn.layers import Conv2d, GroupNorm, Linear, SiLU
from ..nn.module import Module, Parameter, no_grad
from .text_encoder import TextEncoder, TextEncoderConfig

HELDOUT_SEED = 999_983      # evaluation batches use seeds (HELDOUT_SEED, seed, k): never trained on


# -- configuration -------------------------------------------------------------------------------
@dataclass
class CLIPConfig:
    """Sizes of mini-CLIP. ``channels[0]`` is the stem's width; each later entry is one stride-2 stage."""

    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_size: int = 32
    in_channels: int = 3
    channels: tuple = (32, 64, 128, 128)
    norm_groups: int = 8
    coord_channels: bool = True     # append (x, y) coordinate planes to the image (see ImageEncoder)
    embed_dim: int = 64
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)

    def __post_init__(self):
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"CLIPConfig: channels must be positive integers, got {self.channels}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"CLIPConfig: channels {bad} do not divide into norm_groups={self.norm_groups}")
        smallest = self.image_size // 2 ** (len(self.channels) - 1)
        if self.image_size % 2 ** (len(self.channels) - 1) or smallest < 1:
            raise ValueError(f"CLIPConfig: image_size={self.image_size} cannot be halved "
                             f"{len(self.channels) - 1} times")
        if self.embed_dim < 1:
            raise ValueError(f"CLIPConfig: embed_dim must be positive, got {self.embed_dim}")

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
    """Images (B, C, S, S) -> features (B, channels[-1]).

    A stride-1 stem, then stride-2 stages (each ConvNormAct), then the global average over H, W.
    Averaging throws away *where* a feature fired, yet captions say "on the left" and "above".
    So, as in CoordConv, two fixed planes holding each pixel's x and y are appended to the input:
    a filter can then respond to "red AND left half", and that survives the average.
    """

    def __init__(self, config: CLIPConfig, rng=None):
        self.coord_channels = config.coord_channels
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
        # global average pool: f = mean over (H, W)                     (B, c_last)
        return h.mean(axis=(2, 3))

    def backward(self, d_features):
        shape, C = self._cache
        self._cache = None
        xp = get_array_module(d_features)
        # forward was: f = mean_{h,w} h   -> every position gets d_f / (H W)
        dh = xp.empty(shape, d_features.dtype)
        dh[...] = (d_features / (shape[2] * shape[3]))[:, :, None, None]
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


def _softmax(z, axis):
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def contrastive_loss(image_embeds, text_embeds, logit_scale, positives=None, logit_scale_max=math.log(100.0)):
    """Symmetric InfoNCE between L2-normalised embeddings.

    image_embeds (B, D), text_embeds (B, D): the *un-normalised* projections u and v.
    logit_scale: 0-d array (log of the inverse temperature). positives: (B, B) bool, [i, j] True
    when caption j describes image i (None: the identity, CLIP's one-to-one pairing).
    Returns (loss (0-d array), logits (B, B), cache).
    """
    xp = get_array_module(image_embeds)
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(f"contrastive_loss: image_embeds {tuple(image_embeds.shape)} and text_embeds "
                         f"{tuple(text_embeds.shape)} must both be (B, D) with the same B and D")
    B = image_embeds.shape[0]
    if positives is None:
        positives = xp.eye(B, dtype=bool)
    # validated where it lives (a host matrix costs no device sync), then moved beside the embeddings
    if tuple(positives.shape) != (B, B) or not bool(positives.diagonal().all()):
        raise ValueError(f"contrastive_loss: positives must be a ({B}, {B}) bool matrix with a True "
                         f"diagonal (every caption describes its own image), got shape {tuple(positives.shape)}")
    positives = xp.asarray(positives, dtype=bool)
    dtype = image_embeds.dtype
    u_hat, u_cache = l2_normalize(image_embeds)                      # (B, D)
    v_hat, v_cache = l2_normalize(text_embeds)                       # (B, D)
    # s = exp(min(logit_scale, log 100))
    below_cap = (logit_scale <= logit_scale_max).astype(dtype)       # 1, or 0 once capped
    s = xp.exp(xp.minimum(logit_scale, logit_scale_max)).astype(dtype)
    # cos_ij = u_hat_i . v_hat_j,  logits = s cos                    (B_img, B_txt)
    cosine = u_hat @ v_hat.T
    logits = s * cosine
    # targets: uniform over each row's (image -> captions) and each column's (caption -> images) positives
    p = positives.astype(dtype)
    t_rows = p / p.sum(axis=1, keepdims=True)
    t_cols = p / p.sum(axis=0, keepdims=True)
    # CE_rows = -1/B sum_ij T_rows log softmax_rows;  CE_cols likewise down the columns
    log_p_rows = logits - logits.max(axis=1, keepdims=True)
    log_p_rows = log_p_rows - xp.log(xp.exp(log_p_rows).sum(axis=1, keepdims=True))
    log_p_cols = logits - logits.max(axis=0, keepdims=True)
    log_p_cols = log_p_cols - xp.log(xp.exp(log_p_cols).sum(axis=0, keepdims=True))
    loss_rows = -(t_rows * log_p_rows).sum() / B
    loss_cols = -(t_cols * log_p_cols).sum() / B
    loss = 0.5 * (loss_rows + loss_cols)
    cache = (u_cache, v_cache, s, below_cap, cosine, logits, t_rows, t_cols)
    return loss, logits, cache


def contrastive_loss_backward(d_loss, cache):
    """-> (d_image_embeds, d_text_embeds, d_logit_scale), see the module docstring for the math."""
    u_cache, v_cache, s, below_cap, cosine, logits, t_rows, t_cols = cache
    xp = get_array_module(logits)
    B = logits.shape[0]
    # forward was: loss = (CE_rows + CE_cols) / 2
    d_logits = d_loss * ((_softmax(logits, 1) - t_rows) + (_softmax(logits, 0) - t_cols)) / (2 * B)
    # forward was: logits = s cos,  s = exp(logit_scale)  -> ds/dlogit_scale = s (0 above the cap)
    d_logit_scale = (d_logits * cosine).sum() * s * below_cap
    d_cosine = s * d_logits
    # forward was: cos = u_hat v_hat^T
    u_hat, v_hat = u_cache[0], v_cache[0]
    d_u_hat = d_cosine @ v_hat                                       # (B, D)
    d_v_hat = d_cosine.T @ u_hat                                     # (B, D)
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
        self.image_projection = Linear(config.channels[-1], config.embed_dim, bias=False, rng=rng)
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
        if images.shape[0] != np.shape(ids)[0]:
            raise ValueError(f"MiniCLIP: {images.shape[0]} images but {np.shape(ids)[0]} captions; "
                             "a contrastive batch pairs them one to one")
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


# -- which caption describes which image ---------------------------------------------------------
def caption_labels(captions) -> dict:
    """Parse captions into label arrays (as in shapes' labels); -1 = not said (any value is fine)."""
    from ..datasets import captions as grammar
    return grammar.labels_from_attributes([grammar.parse_caption(c) for c in captions])


def caption_matches(image_labels: dict, captions) -> np.ndarray:
    """(B_img, B_txt) bool on the host: [i, j] True when caption j describes image i, i.e. every
    attribute the caption names agrees with image i's labels (an omitted one matches anything)."""
    said = caption_labels(captions)
    match = np.ones((len(image_labels["num_objects"]), len(captions)), dtype=bool)
    for key, wanted in said.items():
        have = np.asarray(image_labels[key])
        match &= (wanted[None, :] == -1) | (have[:, None] == wanted[None, :])
    return match


# -- training ------------------------------------------------------------------------------------
def train_tokenizer(vocab_size: int, corpus_size: int = 20_000, seed: int = 0):
    """A byte-level BPE tokenizer trained on ``corpus_size`` shapes captions."""
    from ..datasets import shapes
    from .tokenizer import BPETokenizer
    return BPETokenizer.train(shapes.caption_corpus(corpus_size, seed=seed), vocab_size)


def retrieval_accuracy(model: MiniCLIP, tokenizer, num_batches: int = 8, batch_size: int = 64, seed: int = 0):
    """Text -> image top-1 within held-out batches of ``batch_size`` pairs.

    For each caption the image with the highest cosine similarity is retrieved; it is a hit when
    the caption describes it (``caption_matches``), so a duplicate is not counted as a miss.
    Returns dict(top1=..., strict_top1=... (hit only on the caption's own image),
    chance=... (expected top-1 of a random pick: mean fraction of images each caption describes)).
    """
    from ..datasets import shapes
    xp = get_array_module(model.logit_scale.data)
    hits = strict = chance = 0.0
    total = 0
    for k in range(num_batches):
        batch = shapes.sample(batch_size, seed=(HELDOUT_SEED, seed, k), size=model.config.image_size)
        ids, mask = tokenizer.encode_batch(batch["captions"], max_length=model.config.text.max_length)
        sim = backend.to_numpy(model.similarity(xp.asarray(batch["images"]), ids, mask))   # (B_img, B_txt)
        best = sim.argmax(axis=0)                                     # top-1 image of each caption
        match = caption_matches(batch["labels"], batch["captions"])
        hits += match[best, np.arange(batch_size)].sum()
        strict += (best == np.arange(batch_size)).sum()
        chance += match.mean(axis=0).sum()
        total += batch_size
    return {"top1": hits / total, "strict_top1": strict / total, "chance": chance / total}


def train_clip(config: CLIPConfig, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
               device: str | None = None, tokenizer=None, progress: bool = True, log_every: int = 50,
               out_dir=None, weight_decay: float = 0.1, warmup_steps: int | None = None,
               grad_clip: float = 1.0, eval_batches: int = 4):
    """Pretrain mini-CLIP on shapes captions. Returns (model, history).

    config:     CLIPConfig (config.text.vocab_size must match the tokenizer).
    tokenizer:  a BPETokenizer; None trains one on shapes captions with config.text.vocab_size.
    device:     "cpu" | "gpu" | None (the current device).
    AdamW with decoupled weight decay on matrices only (not on norms, biases or logit_scale),
    a warmup + cosine learning-rate schedule, and global gradient-norm clipping.
    history:    dict of lists logged every ``log_every`` steps: step, loss, top1 (in-batch,
                attribute-aware), temperature, lr; plus seconds (wall time of training),
                eval (``retrieval_accuracy`` on ``eval_batches`` held-out batches, {} if 0) and
                files ({} or the paths written by ``save_clip`` when ``out_dir`` is given).
    """
    from ..datasets import shapes
    from ..optim import AdamW, clip_grad_norm, warmup_cosine

    for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"train_clip: {name} must be a positive integer, got {value!r}")
    if batch_size < 2:
        raise ValueError(f"train_clip: batch_size must be at least 2 for a contrastive loss, got {batch_size}")
    dev = backend.set_device(device) if device is not None else backend.device()
    if tokenizer is None:
        tokenizer = train_tokenizer(config.text.vocab_size, seed=seed)
    tokenizer.check_vocab_size(config.text.vocab_size)
    model = MiniCLIP(config, seed=seed).to(dev)
    xp = get_array_module(model.logit_scale.data)

    named = model.named_parameters()
    optimizers = [AdamW([(n, p) for n, p in named if p.data.ndim >= 2], lr=lr, betas=(0.9, 0.98),
                        weight_decay=weight_decay),
                  AdamW([(n, p) for n, p in named if p.data.ndim < 2], lr=lr, betas=(0.9, 0.98),
                        weight_decay=0.0)]
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps

    history = {"step": [], "loss": [], "top1": [], "temperature": [], "lr": []}
    stream = shapes.batches(batch_size, seed=seed, size=config.image_size)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc="mini-CLIP", unit="step")
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = next(stream)
        images = xp.asarray(batch["images"])
        # ids, mask and the positives stay on the host: they are checked there and copied over
        ids, mask = tokenizer.encode_batch(batch["captions"], max_length=config.text.max_length)
        match = caption_matches(batch["labels"], batch["captions"])
        model.zero_grad()
        loss, logits = clip_loss_and_backward(model, images, ids, mask, match)
        clip_grad_norm(model, grad_clip)
        step_lr = warmup_cosine(step + 1, lr, warmup, steps, min_lr=0.1 * lr)
        for optimizer in optimizers:
            optimizer.step(lr=step_lr)
        if step % log_every == 0 or step == steps - 1:
            best = backend.to_numpy(logits).argmax(axis=0)           # each caption's top-1 image
            history["step"].append(step)
            history["loss"].append(float(loss))
            history["top1"].append(float(match[best, np.arange(batch_size)].mean()))
            history["temperature"].append(model.temperature)
            history["lr"].append(step_lr)
            if bar is not None:
                bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", top1=f"{history['top1'][-1]:.2f}",
                                T=f"{history['temperature'][-1]:.3f}")
        if bar is not None:
            bar.update(1)
    backend.synchronize()
    history["seconds"] = time.perf_counter() - start
    if bar is not None:
        bar.close()
    model.eval()
    history["eval"] = retrieval_accuracy(model, tokenizer, eval_batches, 64, seed) if eval_batches else {}
    training = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "eval": history["eval"]}
    history["files"] = save_clip(model, tokenizer, out_dir, training) if out_dir is not None else {}
    return model, history


CLIP_FILES = {"clip": "clip.npz", "text_encoder": "text_encoder.npz", "tokenizer": "tokenizer.json"}


def save_clip(model: MiniCLIP, tokenizer, out_dir, training=None) -> dict:
    """Write into ``out_dir``: clip.npz (the whole model), text_encoder.npz (the text tower alone,
    as ``pipeline`` loads it) and tokenizer.json. Configs go in each header as {"model": ...,
    "training": ...}. Returns {"clip": path, "text_encoder": path, "tokenizer": path}."""
    from pathlib import Path

    from ..checkpoint import save_checkpoint
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / name for key, name in CLIP_FILES.items()}
    info = {"training": training or {}}
    save_checkpoint(paths["clip"], model=model, config={"model": dataclasses.asdict(model.config), **info})
    save_checkpoint(paths["text_encoder"], model=model.text_encoder,
                    config={"model": dataclasses.asdict(model.config.text), "source": "mini-CLIP", **info})
    tokenizer.save(paths["tokenizer"])
    return {key: str(path) for key, path in paths.items()}


def load_clip(directory, device: str | None = None):
    """(MiniCLIP, BPETokenizer) from a folder written by ``save_clip`` / ``train_clip(out_dir=...)``."""
    from pathlib import Path

    from ..checkpoint import load_checkpoint, load_into
    from .tokenizer import BPETokenizer
    directory = Path(directory)
    ckpt = load_checkpoint(directory / CLIP_FILES["clip"], hint="train one with: python -m minidiff train clip")
    model = MiniCLIP(CLIPConfig.from_dict(ckpt.config["model"]), seed=0)
    load_into(model, ckpt)
    model.to(device or backend.device()).eval()
    tokenizer = BPETokenizer.load(directory / CLIP_FILES["tokenizer"])
    tokenizer.check_vocab_size(model.config.text.vocab_size)
    return model, tokenizer


if __name__ == "__main__":          # python -m minidiff.models.clip
    from ..datasets import shapes
    config = CLIPConfig.quick()
    tokenizer = train_tokenizer(config.text.vocab_size, corpus_size=2000)
    model = MiniCLIP(config, seed=0)
    batch = shapes.sample(16, seed=0)
    ids, mask = tokenizer.encode_batch(batch["captions"], max_length=config.text.max_length)
    positives = caption_matches(batch["labels"], batch["captions"])
    loss, logits = clip_loss_and_backward(model, batch["images"], ids, mask, positives)
    print(f"MiniCLIP.quick: {model.num_parameters():,} parameters; a batch of 16 pairs, "
          f"{int(positives.sum()) - 16} extra caption-image matches")
    print(f"untrained loss {float(loss):.3f} (log 16 = {math.log(16):.3f}), logits {logits.shape}, "
          f"temperature {model.temperature:.3f}, d loss / d logit_scale = {float(model.logit_scale.grad):+.4f}")
