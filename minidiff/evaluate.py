"""Evaluation: does a sample obey its prompt, and do samples look like the data?

Two numbers, both measured with a small convolutional classifier trained on the shapes data:

Prompt accuracy
    The classifier predicts every attribute of a scene (number of objects, each object's shape,
    colour and size, the position of a single object, the relation between two objects). A
    generated image counts as correct when *every* attribute its prompt states is predicted as
    stated; attributes the prompt leaves out ("a red circle" says nothing about size or position)
    are not checked. ``prompt_accuracy`` also reports the accuracy of each attribute on its own.

Fréchet distance (FD)
    Fit a Gaussian to the classifier's penultimate features of real images, N(mu_1, S_1), and one
    to those of generated images, N(mu_2, S_2). The Fréchet (2-Wasserstein) distance between two
    Gaussians has a closed form:

        FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)

    It is FID (Heusel et al., 2017) with our classifier in place of Inception-v3: 0 for identical
    feature distributions, growing with any difference in mean or spread. Numbers are comparable
    only between runs that use the same classifier and the same sample sizes (the estimate is
    biased upward for small N).

    The matrix square root needs no scipy. S_1 is symmetric positive semi-definite, so
    ``eigh`` gives S_1 = V diag(l) V^T and S_1^1/2 = V diag(sqrt(l)) V^T. Then
    M = S_1^1/2 S_2 S_1^1/2 is symmetric PSD too, and tr(M^1/2) = sum_i sqrt(eig_i(M)).
    (M is similar to S_1 S_2, so this is the tr((S_1 S_2)^1/2) of the usual FID formula,
    computed without ever taking the square root of a non-symmetric matrix.)

The classifier
    conv stages (3x3 conv -> GroupNorm -> SiLU, stride 2 between stages) -> average pool to a
    coarse 4x4 grid -> Linear -> SiLU (the *features*) -> one Linear head per label. Position and
    relation labels depend on *where* things are, which a global average pool would throw away:
    the coarse grid keeps it, and two extra input channels holding each pixel's x and y in
    [-1, 1] ("CoordConv", Liu et al. 2018) give it within each cell. (``pool_grid=1`` is the
    global pool; position accuracy then stays near chance for many more steps.)

    Absent labels (-1: no position in a two-object scene, no second object in a one-object
    scene) take no part in the loss: every training batch is arranged as [one-object scenes |
    two-object scenes], and each head's cross-entropy runs over the rows where its label exists.

Read beside: ``minidiff/datasets/shapes.py`` (labels, `parse_caption`), ``minidiff/models/clip.py``
(ConvNormAct and the coordinate planes, shared with the CLIP image tower),
``minidiff/train.py`` (the ``classifier`` job that trains and saves it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backend
from .datasets import captions, shapes
from .nn import functional as F
from .models.clip import ConvNormAct, coordinate_planes
from .nn.layers import Linear, SiLU
from .nn.module import Module, no_grad

DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[1] / "data" / "pretrained" / "classifier.npz"

# One head per label: (label key, number of classes, which scenes have the label).
HEADS = (("num_objects", 2, "all"),
         ("shape", len(shapes.SHAPES), "all"),
         ("colour", len(shapes.COLOURS), "all"),
         ("size", len(shapes.SIZES), "all"),
         ("position", len(shapes.POSITIONS), "one"),
         ("shape2", len(shapes.SHAPES), "two"),
         ("colour2", len(shapes.COLOURS), "two"),
         ("size2", len(shapes.SIZES), "two"),
         ("relation", len(shapes.RELATIONS), "two"))
HEAD_NAMES = tuple(name for name, _, _ in HEADS)
HELDOUT_SEED = 7          # evaluation scenes: shapes.sample(n, seed=(seed, 7)), never trained on (train uses 1)


@dataclass
class ClassifierConfig:
    """Shape of the attribute classifier. ``channels[i]`` is stage i's width; stage i > 0 halves H, W."""
    image_size: int = 32
    channels: tuple = (32, 64, 128)
    convs_per_stage: int = 2
    num_groups: int = 8
    pool_grid: int = 4          # average-pool the last feature map to pool_grid x pool_grid (1 = global pool)
    feature_dim: int = 128

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)      # JSON gives back a list
        if not self.channels or any(c % self.num_groups for c in self.channels):
            raise ValueError(f"ClassifierConfig: channels {self.channels} must each divide into "
                             f"num_groups={self.num_groups}")

    @classmethod
    def tiny(cls):
        """For tests: seconds on a CPU."""
        return cls(image_size=16, channels=(8, 16), convs_per_stage=1, num_groups=4, pool_grid=2, feature_dim=16)


class AttributeClassifier(Module):
    """Image (B, 3, S, S) in [-1, 1] -> {label key: logits (B, classes)} for every head in HEADS."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig(), seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        widths = [3 + 2] + [c for c in config.channels for _ in range(config.convs_per_stage)]
        strides = [2 if (i > 0 and j == 0) else 1
                   for i in range(len(config.channels)) for j in range(config.convs_per_stage)]
        self.blocks = [ConvNormAct(c_in, c_out, s, config.num_groups, rng=rng)
                       for c_in, c_out, s in zip(widths[:-1], widths[1:], strides)]
        self.hidden = Linear(config.channels[-1] * config.pool_grid ** 2, config.feature_dim, rng=rng)
        self.hidden_act = SiLU()
        self.heads = [Linear(config.feature_dim, classes, rng=rng) for _, classes, _ in HEADS]

    def features(self, x):
        """(B, 3, S, S) -> (B, feature_dim): the penultimate activations (used for the FD)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise ValueError(f"AttributeClassifier: expected square images (B, 3, S, S), got shape {tuple(x.shape)}")
        xp = backend.get_array_module(x)
        B, _, S, _ = x.shape
        h = xp.concatenate([x, coordinate_planes(B, S, xp, x.dtype)], axis=1)      # (B, 5, S, S): + x, y planes
        for block in self.blocks:
            h = block(h)                                       # (B, C, H', W')
        B, C, H, W = h.shape
        g = self.config.pool_grid
        if H % g or W % g:
            raise ValueError(f"AttributeClassifier: a {H}x{W} feature map does not pool to {g}x{g}; "
                             f"images must be multiples of {g * 2 ** (len(self.config.channels) - 1)} pixels")
        self._pooled_shape = h.shape
        # average over (H/g x W/g) windows: (B, C, H, W) -> (B, C, g, g) -> (B, C g g)
        pooled = h.reshape(B, C, g, H // g, g, W // g).mean(axis=(3, 5)).reshape(B, C * g * g)
        return self.hidden_act(self.hidden(pooled))            # (B, feature_dim)

    def forward(self, x):
        f = self.features(x)
        return {name: head(f) for name, head in zip(HEAD_NAMES, self.heads)}

    def backward(self, d_logits):
        """d_logits: {label key: (B, classes)} (heads missing from the dict get no gradient).
        Returns dL/dx (B, 3, S, S)."""
        df = None
        for name, head in zip(HEAD_NAMES, self.heads):
            if name in d_logits:
                g = head.backward(d_logits[name])              # every head reads the same features
                df = g if df is None else df + g
        d_pooled = self.hidden.backward(self.hidden_act.backward(df))          # (B, C g g)
        B, C, H, W = self._pooled_shape
        g = self.config.pool_grid
        xp = backend.get_array_module(d_pooled)
        # forward was: window means -> each of a window's (H/g)(W/g) positions receives d_pooled / its size
        d_windows = (d_pooled / ((H // g) * (W // g))).reshape(B, C, g, 1, g, 1)
        dh = xp.broadcast_to(d_windows, (B, C, g, H // g, g, W // g)).reshape(B, C, H, W)
        for block in reversed(self.blocks):
            dh = block.backward(dh)
        return dh[:, :3]                                       # drop the coordinate channels


# ------------------------------------------------------------------------------------ training
def class_targets(labels: dict) -> dict:
    """shapes labels -> class indices per head (num_objects 1, 2 -> classes 0, 1; -1 stays -1).

    Two-object scenes are put in canonical form first ("B below A" becomes "A above B"): the image
    cannot tell which object its caption named first, so only the canonical labels are learnable."""
    labels = shapes.canonical_labels(labels)
    targets = {name: np.asarray(labels[name], np.int64) for name in HEAD_NAMES}
    targets["num_objects"] = targets["num_objects"] - 1
    return targets


def arrange_batch(images, labels: dict):
    """Reorder a labelled batch as [one-object scenes | two-object scenes] (host labels).

    Returns (images, targets, num_single): each head's label exists on a contiguous block of
    rows (see `head_rows`), so the loss needs no masking and no device-to-host reads.
    """
    order = np.argsort(np.asarray(labels["num_objects"]), kind="stable")
    num_single = int((np.asarray(labels["num_objects"]) == 1).sum())
    targets = {name: t[order] for name, t in class_targets(labels).items()}
    for name, rows in ((n, head_rows(n, num_single, len(order))) for n in HEAD_NAMES):
        if (targets[name][rows] < 0).any():
            raise ValueError(f"arrange_batch: label {name!r} is absent (-1) in a scene that should have it")
    xp = backend.get_array_module(images)
    return images[xp.asarray(order)], targets, num_single


def head_rows(name: str, num_single: int, batch: int) -> slice:
    """The rows of an arranged batch whose label ``name`` exists."""
    scenes = dict((n, s) for n, _, s in HEADS)[name]
    return {"all": slice(0, batch), "one": slice(0, num_single), "two": slice(num_single, batch)}[scenes]


def classifier_loss(model: AttributeClassifier, images, targets: dict, num_single: int):
    """Sum over heads of the cross-entropy on the rows where the head's label exists; runs backward.

    images (B, 3, S, S) arranged as [one-object | two-object] (`arrange_batch`), ``num_single``
    rows of one-object scenes first; targets {head: int (B,)} on the images' device.
    Returns the loss as a 0-d array (no sync); the parameters' grads are filled.
    """
    batch = images.shape[0]
    logits = model.forward(images)
    xp = backend.get_array_module(images)
    total, d_logits = 0.0, {}
    for name in HEAD_NAMES:
        rows = head_rows(name, num_single, batch)
        if rows.stop - rows.start == 0:                 # e.g. no two-object scene in this batch
            d_logits[name] = xp.zeros_like(logits[name])
            continue
        loss, cache = F.cross_entropy(logits[name][rows], targets[name][rows])
        total = total + loss
        d_logits[name] = xp.zeros_like(logits[name])
        d_logits[name][rows] = F.cross_entropy_backward(1.0, cache)
    model.backward(d_logits)
    return total


def train_classifier(steps: int = 600, batch_size: int = 32, seed: int = 0, device: str | None = None,
                     config: ClassifierConfig | None = None, lr: float = 2e-3, dataset_size: int = 8000,
                     out=None, progress: bool = False):
    """Train an AttributeClassifier on shapes images with AdamW; returns it in eval mode (EMA weights).

    The ``classifier`` job of ``minidiff/train.py`` (the loop every model trains with) with these
    settings; ``out`` is a folder for classifier.npz, or None to keep the model in memory only.
    """
    from . import train       # train.py imports this module, so import it here, when needed
    if device is not None:
        backend.set_device(device)
    job = train.make_config("classifier", "quick", {"steps": steps, "batch_size": batch_size, "seed": seed,
                                                     "lr": lr, "dataset_size": dataset_size})
    if config is not None:
        job = dataclasses.replace(job, model=config)
    return train.run_classifier(job, out=out, progress=progress).model


def classifier_accuracy(classifier, n: int = 1024, seed: int = 0) -> dict:
    """Accuracy of each head on ``n`` held-out shapes scenes, over the scenes that have the label."""
    batch = shapes.sample(n, seed=(seed, HELDOUT_SEED), size=classifier.config.image_size)
    targets = class_targets(batch["labels"])
    chunks = _batched(classifier, batch["images"], 256,
                      lambda m, x: {k: backend.to_numpy(v.argmax(axis=1)) for k, v in m(x).items()})
    scores = {}
    for name in HEAD_NAMES:
        predicted = np.concatenate([c[name] for c in chunks])
        present = targets[name] >= 0
        scores[name] = float((predicted[present] == targets[name][present]).mean()) if present.any() else float("nan")
    return scores


# ---------------------------------------------------------------------------------- predictions
def _batched(classifier, images, batch_size, fn):
    """Apply ``fn(classifier, x)`` to ``images`` (host or device) in batches, in eval mode.

    Each batch is moved to the device of the classifier's weights first."""
    weights = [p.data for p in classifier.parameters()[:1]]
    xp = backend.get_array_module(*weights)
    classifier.eval()
    outputs = []
    with no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            if backend.get_array_module(x) is not xp:
                x = xp.asarray(backend.to_numpy(x))
            outputs.append(fn(classifier, x.astype(np.float32, copy=False)))
    return outputs


def classifier_features(classifier, images, batch_size: int = 256) -> np.ndarray:
    """Penultimate features (N, feature_dim), float64 on the host."""
    chunks = _batched(classifier, images, batch_size, lambda m, x: backend.to_numpy(m.features(x)))
    return np.concatenate(chunks).astype(np.float64)


def predict_labels(classifier, images, batch_size: int = 256) -> dict:
    """shapes-style labels predicted for each image: {label key: int64 (N,)}, -1 where the
    predicted number of objects says the label does not exist."""
    def predict(model, x):
        return {name: backend.to_numpy(logits.argmax(axis=1)) for name, logits in model(x).items()}
    chunks = _batched(classifier, images, batch_size, predict)
    labels = {name: np.concatenate([c[name] for c in chunks]).astype(np.int64) for name in HEAD_NAMES}
    labels["num_objects"] = labels["num_objects"] + 1
    two = labels["num_objects"] == 2
    for name, _, scenes in HEADS:
        if scenes == "one":
            labels[name][two] = -1
        elif scenes == "two":
            labels[name][~two] = -1
    return labels


def prompt_accuracy(images, prompts, classifier, batch_size: int = 256):
    """Fraction of images whose predicted attributes agree with everything their prompt states.

    images (N, 3, S, S) in [-1, 1]; prompts: N strings in the shapes grammar (see
    `shapes.parse_caption`); classifier: an AttributeClassifier (or anything with the same
    ``forward``). Returns (accuracy, {attribute: accuracy over the prompts that state it}).
    """
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"prompt_accuracy: {len(images)} images but {len(prompts)} prompts")
    if not prompts:
        raise ValueError("prompt_accuracy: got no images")
    parsed = [shapes.canonical_attributes(shapes.parse_caption(p)) for p in prompts]   # as the classifier sees scenes
    predicted = predict_labels(classifier, images, batch_size)
    correct, stated = [], {}
    for i, prompt in enumerate(parsed):
        agreement = shapes.prompt_agreement(prompt, shapes.attributes_from_labels(predicted, i))
        correct.append(all(agreement.values()))
        for attribute, ok in agreement.items():
            stated.setdefault(attribute, []).append(ok)
    per_attribute = {attribute: float(np.mean(oks)) for attribute, oks in stated.items()}
    return float(np.mean(correct)), per_attribute


# ----------------------------------------------------------------------------- Fréchet distance
def sqrtm_psd(matrix):
    """Square root of a symmetric positive semi-definite matrix: V diag(sqrt(l)) V^T (eigh).

    Eigenvalues that round-off pushed slightly below zero are clipped to zero."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> float:
    """FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)   (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = sqrtm_psd(sigma1)                                   # S1^1/2
    middle = root1 @ sigma2 @ root1                             # S1^1/2 S2 S1^1/2 (symmetric PSD)
    middle = (middle + middle.T) / 2                            # remove round-off asymmetry
    # tr(M^1/2) = sum_i sqrt(eig_i(M))
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    mean_term = float(((mu1 - mu2) ** 2).sum())                # |mu1 - mu2|^2
    distance = mean_term + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)                            # >= 0 up to round-off


def feature_statistics(features):
    """(mean (D,), covariance (D, D)) of features (N, D), covariance with the 1/(N-1) estimator."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"frechet_distance: need features (N >= 2, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_from_features(real_features, generated_features) -> float:
    """FD between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance_from_statistics(*feature_statistics(real_features),
                                            *feature_statistics(generated_features))


def frechet_distance(real_images, generated_images, classifier, batch_size: int = 256) -> float:
    """FD between real and generated images in the classifier's penultimate feature space."""
    return frechet_distance_from_features(classifier_features(classifier, real_images, batch_size),
                                          classifier_features(classifier, generated_images, batch_size))


# ------------------------------------------------------------------------- the fixed prompt set
def _object(colour, shape, size=None):
    words = ([size] if size else []) + [colour, shape]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _fixed_prompts():
    """30 one-object prompts: every colour with every shape, and every colour at every position
    (object i: colour i mod 6, shape (i // 6) mod 3, position i mod 5, a size word on two thirds),
    then 12 two-object prompts, each relation three times, the two objects of different colours."""
    one = [_object(shapes.COLOURS[i % 6], shapes.SHAPES[(i // 6) % 3], (None, "small", "large")[(i // 5) % 3])
           + " " + captions.POSITION_PHRASES[shapes.POSITIONS[i % 5]][0] for i in range(30)]
    two = [_object(shapes.COLOURS[j % 6], shapes.SHAPES[(j // 4) % 3]) + " " + shapes.RELATIONS[j % 4] + " "
           + _object(shapes.COLOURS[(j + 3) % 6], shapes.SHAPES[(j // 4 + 1 + j % 2) % 3]) for j in range(12)]
    return tuple(one + two)


FIXED_PROMPTS = _fixed_prompts()     # e.g. "a red circle on the left", "a green square below a yellow triangle"


# ------------------------------------------------------------------------------ sampling helpers
def generate(pipe, prompts, guidance_scale: float, steps: int = 50, seed: int = 0, sampler: str = "ddim",
             batch_size: int = 64, spacing: str = "leading"):
    """One image per prompt from a text-to-image ``pipeline.Pipeline``, a different prompt in every
    row of a batch; classifier-free guidance against the empty prompt. Host images (N, 3, H, W).

    ``spacing`` is ``samplers.sample``'s timestep spacing ("leading", "trailing" or "linspace")."""
    from .diffusion import samplers
    from .pipeline import guided_prediction
    prompts = list(prompts)
    size = pipe.vae.config.latent_size
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        cond, cond_mask = pipe.encode_prompts(chunk)                       # (b, L, W), (b, L)
        uncond, uncond_mask = pipe.encode_prompts([""] * len(chunk))
        xp = backend.get_array_module(cond)
        context, context_mask = xp.concatenate([uncond, cond]), xp.concatenate([uncond_mask, cond_mask])

        def model_fn(z, t):
            with no_grad():     # both branches in one batch of 2b: eps = eps_u + s (eps_c - eps_u)
                out = pipe.unet.forward(xp.concatenate([z, z]), xp.concatenate([t, t]), context, context_mask)
            return guided_prediction(out[:len(chunk)], out[len(chunk):], guidance_scale)

        latents = samplers.sample(model_fn, pipe.schedule, (len(chunk), pipe.latent_channels, size, size),
                                  sampler=sampler, steps=steps, rng=backend.rng(seed + start),
                                  prediction_type=pipe.prediction_type, spacing=spacing, progress=False)
        images.append(backend.to_numpy(pipe.decode(latents)))
    return np.concatenate(images)


def sample_unconditional(model, schedule, n: int, shape, steps: int = 50, seed: int = 0, sampler: str = "ddim",
                         prediction_type: str = "epsilon", decode=None, batch_size: int = 64,
                         spacing: str = "leading", clip_x0: bool = False):
    """n samples of an unconditional U-Net (decoded by ``decode`` for a latent model); host (N, C, H, W),
    clipped to [-1, 1].

    ``spacing`` and ``clip_x0`` are ``samplers.sample``'s, with its defaults: the timestep spacing
    ("leading", "trailing" or "linspace"), and whether every x0 prediction is clipped to [-1, 1]
    (for pixel models; a latent's x0 is not an image and must not be clipped)."""
    from .diffusion import samplers
    images = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        with no_grad():
            x = samplers.sample(lambda x_t, t: model.forward(x_t, t), schedule, (count,) + tuple(shape),
                                sampler=sampler, steps=steps, rng=backend.rng(seed + start),
                                prediction_type=prediction_type, spacing=spacing, clip_x0=clip_x0,
                                progress=False)
            if decode is not None:
                x = decode(x)
        images.append(backend.to_numpy(x))
    return np.clip(np.concatenate(images), -1.0, 1.0)


def match_size(images, size: int):
    """Square images (N, C, H, H) at the classifier's size: average-pooled by an integer factor
    when larger, repeated (nearest neighbour) by an integer factor when smaller."""
    height = images.shape[2]
    if height == size:
        return images
    n, c = images.shape[:2]
    if images.shape[3] == height and height % size == 0:
        f = height // size
        return images.reshape(n, c, size, f, size, f).mean(axis=(3, 5))
    if images.shape[3] == height and size % height == 0:
        f = size // height
        return images.repeat(f, axis=2).repeat(f, axis=3)
    raise ValueError(f"images are {height}x{images.shape[3]}; the classifier takes {size}x{size} "
                     "(or square images an integer multiple or fraction of it)")


# ------------------------------------------------------------------------ evaluating a checkpoint
def load_classifier(path=DEFAULT_CLASSIFIER, device=None):
    """The AttributeClassifier in a classifier checkpoint (``python -m minidiff train classifier``)."""
    from . import train
    model, _ = train.load_trained(path, device, hint="train it with: python -m minidiff train classifier")
    if not isinstance(model, AttributeClassifier):
        raise ValueError(f"{path} is not a classifier checkpoint")
    return model


def _sibling_or_recorded(ckpt, file_name, recorded):
    """An input model of a checkpoint: the file beside it (as `train all` lays them out), else
    the path recorded in its config."""
    beside = Path(ckpt.path).parent / file_name
    return beside if beside.exists() else Path(recorded or beside)


def evaluate_checkpoint(path, num_images: int = 512, steps: int = 50, sampler: str = "ddim",
                        guidance_scales=(1.0, 2.0, 4.0, 7.5), seed: int = 0, classifier=DEFAULT_CLASSIFIER,
                        device=None, batch_size: int = 64, verbose: bool = True, spacing: str = "leading",
                        clip_x0: bool = False) -> dict:
    """Sample a pixel, latent or text-to-image checkpoint and score it against real shapes images.

    ``spacing`` (every model) and ``clip_x0`` (pixel models only) go to ``samplers.sample``;
    ``batch_size`` is the number of images sampled at once.

    Prints and returns {"reference_fd": FD between two independent real sets of the same size (the
    noise floor), "fd": ... (unconditional models) or, for text-to-image (prompts cycling through
    FIXED_PROMPTS), "reference_accuracy" (the prompt accuracy of true renders of the prompts: the
    classifier's ceiling) and "guidance": {scale: {"fd", "accuracy", "per_attribute"}}}.
    """
    from . import train
    from .diffusion.schedule import NoiseSchedule
    from .pipeline import Pipeline
    if num_images < 2:
        raise ValueError(f"evaluate: need at least 2 images for a Fréchet distance, got {num_images}")
    if steps < 1:
        raise ValueError(f"evaluate: steps must be >= 1, got {steps}")
    if any(not g >= 0 for g in guidance_scales):
        raise ValueError(f"evaluate: guidance scales must be >= 0, got {list(guidance_scales)}")
    from .diffusion.samplers import SPACINGS
    if spacing not in SPACINGS:
        raise ValueError(f"evaluate: spacing must be one of {SPACINGS}, got {spacing!r}")
    if device is not None:
        backend.set_device(device)
    model, ckpt = train.load_trained(path)
    job = ckpt.config["job"]
    if job not in ("pixel", "latent", "text2image"):
        raise ValueError(f"evaluate: {path} is a {job!r} checkpoint; give a pixel, latent or text2image one")
    if clip_x0 and job != "pixel":
        raise ValueError(f"evaluate: clip_x0=True clips x0 predictions to [-1, 1], which only suits pixel "
                         f"models; {path} is a {job!r} checkpoint (its x0 is a latent)")
    judge = load_classifier(classifier)
    size = judge.config.image_size
    recorded = ckpt.config.get("train", {})
    diffusion = ckpt.config.get("diffusion", {})
    schedule = NoiseSchedule.make(diffusion.get("schedule", "linear"), int(diffusion.get("num_steps", 1000)))
    prediction_type = diffusion.get("prediction_type", "epsilon")

    vae = None
    if job in ("latent", "text2image"):
        vae, _ = train.load_trained(_sibling_or_recorded(ckpt, train.FILES["vae"], recorded.get("vae")))
    image_size = vae.config.image_size if vae is not None else model.config.image_size
    real = shapes.sample(num_images, seed=(seed, HELDOUT_SEED), size=image_size)["images"]
    real_features = classifier_features(judge, match_size(real, size))
    other = shapes.sample(num_images, seed=(seed, HELDOUT_SEED + 1), size=image_size)["images"]
    results = {"job": job, "num_images": num_images,
               "reference_fd": frechet_distance_from_features(real_features,
                                                              classifier_features(judge, match_size(other, size)))}
    say = print if verbose else (lambda *a, **k: None)
    say(f"evaluate {path} ({job}, step {ckpt.step}): {num_images} images, {sampler} {steps} steps, "
        f"{spacing} spacing" + (", x0 clipped" if clip_x0 else ""))
    say(f"  Fréchet distance between two real sets (noise floor): {results['reference_fd']:.3f}")

    if job in ("pixel", "latent"):
        decode = None
        shape = (model.config.in_channels, model.config.image_size, model.config.image_size)
        if vae is not None:
            decode = lambda z: backend.get_array_module(z).clip(vae.decode_latents(z), -1, 1)  # noqa: E731
        images = sample_unconditional(model, schedule, num_images, shape, steps, seed, sampler, prediction_type,
                                      decode, batch_size, spacing=spacing, clip_x0=clip_x0)
        if images.shape[1] != 3:
            raise ValueError(f"evaluate: the classifier judges RGB shapes images; this model makes "
                             f"{images.shape[1]}-channel images")
        results["fd"] = frechet_distance_from_features(real_features,
                                                       classifier_features(judge, match_size(images, size)))
        say(f"  Fréchet distance, samples vs real: {results['fd']:.3f}")
        return results

    from .models.tokenizer import BPETokenizer
    text_encoder = train._frozen_text_encoder(
        _sibling_or_recorded(ckpt, train.TEXT_ENCODER_FILE, recorded.get("text_encoder")))
    tokenizer = BPETokenizer.load(_sibling_or_recorded(ckpt, train.TOKENIZER_FILE, recorded.get("tokenizer")))
    pipe = Pipeline(vae=vae, unet=model, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule,
                    prediction_type=prediction_type, max_length=text_encoder.config.max_length)
    prompts = [FIXED_PROMPTS[i % len(FIXED_PROMPTS)] for i in range(num_images)]
    # the judge's ceiling: true renders of the same prompts, scored the same way
    rendered = np.stack([shapes.render(shapes.parse_caption(p), image_size, rng=(seed, i))
                         for i, p in enumerate(prompts)])
    results["reference_accuracy"] = prompt_accuracy(match_size(rendered, size), prompts, judge)[0]
    say(f"  prompt accuracy of true renders of the prompts (the judge's ceiling): {results['reference_accuracy']:.3f}")
    results["guidance"] = {}
    say(f"  {'guidance':>8}  {'FD':>8}  {'prompt acc':>10}  per attribute")
    for scale in guidance_scales:
        images = np.clip(generate(pipe, prompts, scale, steps, seed, sampler, batch_size, spacing), -1.0, 1.0)
        images = match_size(images, size)
        accuracy, per_attribute = prompt_accuracy(images, prompts, judge)
        fd = frechet_distance_from_features(real_features, classifier_features(judge, images))
        results["guidance"][float(scale)] = {"fd": fd, "accuracy": accuracy, "per_attribute": per_attribute}
        say(f"  {scale:>8g}  {fd:>8.3f}  {accuracy:>10.3f}  "
            + " ".join(f"{k}={v:.2f}" for k, v in per_attribute.items()))
    return results


def add_arguments(parser):
    parser.add_argument("checkpoint", help="a pixel.npz, latent.npz or unet.npz (text-to-image) checkpoint")
    parser.add_argument("--n", type=int, default=512,
                        help="images to sample (per guidance scale); the FD's noise floor shrinks with more")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--sampler", default="ddim", help="ddim, ddpm, euler, euler_ancestral or dpmpp_2m")
    parser.add_argument("--spacing", default="leading",
                        help="timestep spacing: leading (default), trailing (starts at t = T-1) or linspace")
    parser.add_argument("--clip-x0", action="store_true",
                        help="pixel models: clip every x0 prediction to [-1, 1] while sampling")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5],
                        help="classifier-free guidance scales to compare (text-to-image)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="images sampled at once")
    parser.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER),
                        help="classifier checkpoint (python -m minidiff train classifier)")
    backend.add_device_argument(parser)
    return parser


def main(args) -> int:
    from .diffusion.samplers import SAMPLERS, SPACINGS
    if args.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {SAMPLERS}, got {args.sampler!r}")
    if args.spacing not in SPACINGS:
        raise ValueError(f"--spacing must be one of {SPACINGS}, got {args.spacing!r}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    evaluate_checkpoint(args.checkpoint, args.n, args.steps, args.sampler, args.guidance, args.seed,
                        args.classifier, args.device, args.batch_size, spacing=args.spacing, clip_x0=args.clip_x0)
    return 0
