"""Evaluation: does a sample obey its prompt, and do samples look like the data?

Two numbers, both measured with a small convolutional classifier trained on the shapes data:

Prompt accuracy, by category
    The classifier predicts every attribute of a scene (number of objects, each object's shape,
    colour and size, the position of a single object, the relation between two objects). A
    generated image counts as correct when *every* attribute its prompt states is predicted as
    stated; attributes the prompt leaves out ("a red circle" says nothing about size or position)
    are not checked. ``prompt_accuracy`` also reports the accuracy of each attribute on its own,
    and ``accuracy_by_category`` splits it the way GenEval does: single objects by attribute,
    two objects by the relation the prompt says, attribute binding, overall. Always read the
    table: an average over a prompt set hides the category that fails.

Relation probe
    ``relation_probe`` asks the text tower itself whether "A above B" differs from "A below B"
    (ARO's relation test): a bag of words scores 50%.

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

Text-image retrieval
    ``retrieval_accuracy``: for each held-out caption, is the image mini-CLIP finds most similar
    one the caption describes?

Read beside: ``minidiff/models/classifier.py`` (the judge), ``minidiff/datasets/captions.py``
(labels, `parse_caption`, FIXED_PROMPTS), ``minidiff/train/jobs.py`` (the ``classifier`` job
that trains it) and ``minidiff/zoo.py`` (where the shipped judge lives).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import backend, zoo
from .datasets import captions, shapes
from .diffusion import samplers
from .models.classifier import (HEAD_NAMES, HEADS, AttributeClassifier, ClassifierConfig,  # noqa: F401
                                classifier_loss, head_rows)
from .models.clip import MiniCLIP
from .nn.module import no_grad

DEFAULT_CLASSIFIER = zoo.PRETRAINED_DIR / zoo.FILES["classifier"]
FIXED_PROMPTS = captions.FIXED_PROMPTS    # (re-exported: the prompt set lives with the caption grammar)

HELDOUT_SEED = 7          # evaluation scenes: shapes.sample(n, seed=(seed, 7)), never trained on (train uses 1)
CLIP_HELDOUT_SEED = 999_983   # retrieval batches use seeds (CLIP_HELDOUT_SEED, seed, k): never trained on


# ------------------------------------------------------------------------- the classifier's data
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


# ------------------------------------------------------------------------- accuracy by category
SINGLE_ATTRIBUTES = ("colour", "shape", "size", "position")


def accuracy_by_category(images, prompts, classifier, batch_size: int = 256) -> dict:
    """Prompt accuracy by category, the shape of GenEval's table; an average alone hides the
    failing case. Returns {category: (accuracy, number of prompts)} in this order:

        single/colour, single/shape, single/size, single/position   one-object prompts that state
                                  the attribute: one object predicted, and that attribute right
        relation/above, relation/below, relation/to the left of, relation/to the right of
                                  two-object prompts by the relation they *say* ("under" counts as
                                  below): every stated attribute right, i.e. both objects and where
                                  each one is
        binding                   two-object prompts: each colour on its own shape (as a pair of
                                  colour-shape pairs, whatever the layout)
        overall                   every prompt: every stated attribute right (``prompt_accuracy``)

    A category no prompt falls in is left out."""
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"accuracy_by_category: {len(images)} images but {len(prompts)} prompts")
    predicted = predict_labels(classifier, images, batch_size)
    hits = {}

    def count(category, ok):
        hits.setdefault(category, []).append(bool(ok))

    for i, prompt in enumerate(prompts):
        said = shapes.parse_caption(prompt)
        scene = shapes.attributes_from_labels(predicted, i)
        agreement = shapes.prompt_agreement(shapes.canonical_attributes(said), scene)
        if said["num_objects"] == 1:
            for attribute in SINGLE_ATTRIBUTES:
                if said[attribute] is not None:
                    count(f"single/{attribute}", agreement["num_objects"] and agreement[attribute])
        else:
            count(f"relation/{said['relation']}", all(agreement.values()))
            pairs = lambda a: sorted([(a["colour"], a["shape"]), (a["colour2"], a["shape2"])], key=str)  # noqa: E731
            count("binding", scene["num_objects"] == 2 and pairs(said) == pairs(scene))
        count("overall", all(agreement.values()))
    order = ([f"single/{a}" for a in SINGLE_ATTRIBUTES] + [f"relation/{r}" for r in captions.RELATIONS]
             + ["binding", "overall"])
    return {name: (float(np.mean(hits[name])), len(hits[name])) for name in order if name in hits}


def format_categories(tables: dict) -> str:
    """{column title: accuracy_by_category(...)} -> a text table, one row per category."""
    columns = list(tables)
    names = list(dict.fromkeys(name for table in tables.values() for name in table))
    width = max(len(n) for n in names) + 2
    lines = [f"  {'category':<{width}}" + "".join(f"{c:>12}" for c in columns) + "   prompts"]
    for name in names:
        cells = "".join(f"{100 * tables[c][name][0]:>11.1f}%" if name in tables[c] else f"{'-':>12}"
                        for c in columns)
        count = next(tables[c][name][1] for c in columns if name in tables[c])
        lines.append(f"  {name:<{width}}{cells}   {count}")
    return "\n".join(lines)


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


# ------------------------------------------------------------------------------ sampling helpers
def generate(pipe, prompts, guidance_scale: float, steps: int = 50, seed: int = 0, sampler: str = "ddim",
             batch_size: int = 64, spacing: str = "leading"):
    """One image per prompt from a text-to-image ``pipeline.Pipeline`` (``Pipeline.sample_prompts``:
    a different prompt in every row of a batch, classifier-free guidance against the empty prompt).
    Host images (N, 3, H, W) in [-1, 1]."""
    return pipe.sample_prompts(prompts, guidance_scale, steps=steps, seed=seed, sampler=sampler,
                               batch_size=batch_size, spacing=spacing)


def sample_unconditional(model, schedule, n: int, shape, steps: int = 50, seed: int = 0, sampler: str = "ddim",
                         prediction_type: str = "epsilon", decode=None, batch_size: int = 64,
                         spacing: str = "leading", clip_x0: bool = False):
    """n samples of an unconditional U-Net (decoded by ``decode`` for a latent model); host (N, C, H, W),
    clipped to [-1, 1].

    ``spacing`` and ``clip_x0`` are ``samplers.sample``'s, with its defaults: the timestep spacing
    ("leading", "trailing" or "linspace"), and whether every x0 prediction is clipped to [-1, 1]
    (for pixel models; a latent's x0 is not an image and must not be clipped)."""
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


# ---------------------------------------------------------------------- text-image retrieval
def retrieval_accuracy(model: MiniCLIP, tokenizer, num_batches: int = 8, batch_size: int = 64, seed: int = 0):
    """Text -> image top-1 of a mini-CLIP within held-out batches of ``batch_size`` pairs.

    For each caption the image with the highest cosine similarity is retrieved; it is a hit when
    the caption describes it (``captions.caption_matches``), so a duplicate is not counted as a miss.
    Returns dict(top1=..., strict_top1=... (hit only on the caption's own image),
    chance=... (expected top-1 of a random pick: mean fraction of images each caption describes)).
    """
    xp = backend.get_array_module(model.logit_scale.data)
    hits = strict = chance = 0.0
    total = 0
    for k in range(num_batches):
        batch = shapes.sample(batch_size, seed=(CLIP_HELDOUT_SEED, seed, k), size=model.config.image_size)
        ids, mask = tokenizer.encode_batch(batch["captions"], max_length=model.config.text.max_length)
        with no_grad():
            sim = backend.to_numpy(model.similarity(xp.asarray(batch["images"]), ids, mask))   # (B_img, B_txt)
        best = sim.argmax(axis=0)                                     # top-1 image of each caption
        match = captions.caption_matches(batch["labels"], batch["captions"])
        hits += match[best, np.arange(batch_size)].sum()
        strict += (best == np.arange(batch_size)).sum()
        chance += match.mean(axis=0).sum()
        total += batch_size
    return {"top1": hits / total, "strict_top1": strict / total, "chance": chance / total}


def relation_probe(model: MiniCLIP, tokenizer, num_scenes: int = 512, seed: int = 0) -> dict:
    """Does mini-CLIP's text tower know word order? (the shape of ARO's relation test)

    For held-out two-object scenes, score the true image against its true caption and against
    each hard negative (``captions.hard_negatives``: the relation flipped, the objects swapped,
    the colours swapped), all written in the canonical template. A hit is cos(image, true) >
    cos(image, negative). A bag of words scores 50%. Returns {relation: {kind: (accuracy, n)}}."""
    xp = backend.get_array_module(model.logit_scale.data)
    batch = shapes.sample(num_scenes, seed=(CLIP_HELDOUT_SEED, seed, 7), size=model.config.image_size,
                          two_object_fraction=1.0)
    truths = [shapes.attributes_from_labels(batch["labels"], i) for i in range(num_scenes)]
    negatives = [captions.hard_negatives(truth) for truth in truths]
    texts = [captions.caption_for(a, 0, 0.0, 0.0) for truth, neg in zip(truths, negatives)
             for a in [truth, *neg.values()]]
    text_embeds, image_embeds = [], []
    for start in range(0, len(texts), 256):                       # unit vectors, in batches
        ids, mask = tokenizer.encode_batch(texts[start:start + 256], max_length=model.config.text.max_length)
        text_embeds.append(backend.to_numpy(model.encode_text(xp.asarray(ids), xp.asarray(mask))))
    for start in range(0, num_scenes, 256):
        image_embeds.append(backend.to_numpy(model.encode_image(xp.asarray(batch["images"][start:start + 256]))))
    text_embeds, image_embeds = np.concatenate(text_embeds), np.concatenate(image_embeds)
    results, row = {}, 0
    for i, (truth, negative) in enumerate(zip(truths, negatives)):
        cos = text_embeds[row:row + 1 + len(negative)] @ image_embeds[i]      # [true, negatives...]
        row += 1 + len(negative)
        for kind, score in zip(negative, cos[1:]):
            results.setdefault(truth["relation"], {}).setdefault(kind, []).append(cos[0] > score)
    return {relation: {kind: (float(np.mean(v)), len(v)) for kind, v in kinds.items()}
            for relation, kinds in sorted(results.items(), key=lambda kv: captions.RELATIONS.index(kv[0]))}


# ------------------------------------------------------------------------ evaluating a checkpoint
def load_classifier(path=DEFAULT_CLASSIFIER, device=None):
    """The AttributeClassifier in a classifier checkpoint (``python -m minidiff train classifier``)."""
    return zoo.load_classifier(path, device)


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
    ``device``: where to run (None: the current device; the caller's device is left as it was).
    """
    with backend.using(device):
        return _evaluate_checkpoint(path, num_images, steps, sampler, guidance_scales, seed, classifier,
                                    batch_size, verbose, spacing, clip_x0)


def _evaluate_checkpoint(path, num_images, steps, sampler, guidance_scales, seed, classifier, batch_size,
                         verbose, spacing, clip_x0):
    from .diffusion.schedule import NoiseSchedule
    from .pipeline import Pipeline
    if num_images < 2:
        raise ValueError(f"evaluate: need at least 2 images for a Fréchet distance, got {num_images}")
    if steps < 1:
        raise ValueError(f"evaluate: steps must be >= 1, got {steps}")
    if any(not g >= 0 for g in guidance_scales):
        raise ValueError(f"evaluate: guidance scales must be >= 0, got {list(guidance_scales)}")
    if spacing not in samplers.SPACINGS:
        raise ValueError(f"evaluate: spacing must be one of {samplers.SPACINGS}, got {spacing!r}")
    model, ckpt = zoo.load_trained(path)
    job = ckpt.config["job"]
    say = print if verbose else (lambda *a, **k: None)
    if job == "clip":
        return _evaluate_clip(model, ckpt, num_images, seed, say)
    if job not in ("pixel", "latent", "text2image"):
        raise ValueError(f"evaluate: {path} is a {job!r} checkpoint; give a pixel, latent, text2image or clip one")
    if clip_x0 and job != "pixel":
        raise ValueError(f"evaluate: clip_x0=True clips x0 predictions to [-1, 1], which only suits pixel "
                         f"models; {path} is a {job!r} checkpoint (its x0 is a latent)")
    judge = load_classifier(classifier)
    size = judge.config.image_size
    recorded = ckpt.config.get("train", {})
    diffusion = zoo.diffusion_settings(ckpt)
    schedule = NoiseSchedule.make(diffusion["schedule"], diffusion["num_steps"])
    prediction_type = diffusion["prediction_type"]

    vae = None
    if job in ("latent", "text2image"):
        vae = zoo.load_vae(_sibling_or_recorded(ckpt, zoo.FILES["vae"], recorded.get("vae")))
    image_size = vae.config.image_size if vae is not None else model.config.image_size
    real = shapes.sample(num_images, seed=(seed, HELDOUT_SEED), size=image_size)["images"]
    real_features = classifier_features(judge, match_size(real, size))
    other = shapes.sample(num_images, seed=(seed, HELDOUT_SEED + 1), size=image_size)["images"]
    results = {"job": job, "num_images": num_images,
               "reference_fd": frechet_distance_from_features(real_features,
                                                              classifier_features(judge, match_size(other, size)))}
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

    text_encoder = zoo.load_text_encoder(
        _sibling_or_recorded(ckpt, zoo.FILES["text_encoder"], recorded.get("text_encoder")))
    tokenizer = zoo.load_tokenizer(_sibling_or_recorded(ckpt, zoo.FILES["tokenizer"], recorded.get("tokenizer")),
                                   text_encoder.config.vocab_size)
    pipe = Pipeline(vae=vae, unet=model, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule,
                    prediction_type=prediction_type, max_length=text_encoder.config.max_length)
    prompt_set = captions.CATEGORY_PROMPTS
    prompts = [prompt_set[i % len(prompt_set)] for i in range(num_images)]
    # the judge's ceiling: true renders of the same prompts, scored the same way
    rendered = np.stack([shapes.render(shapes.parse_caption(p), image_size, rng=(seed, i))
                         for i, p in enumerate(prompts)])
    ceiling = accuracy_by_category(match_size(rendered, size), prompts, judge)
    results["reference_accuracy"] = ceiling["overall"][0]
    results["reference_categories"] = ceiling
    results["guidance"] = {}
    tables = {"true render": ceiling}
    say(f"  {'guidance':>8}  {'FD':>8}  {'all right':>10}")
    for scale in guidance_scales:
        images = np.clip(generate(pipe, prompts, scale, steps, seed, sampler, batch_size, spacing), -1.0, 1.0)
        images = match_size(images, size)
        categories = accuracy_by_category(images, prompts, judge)
        accuracy, per_attribute = prompt_accuracy(images, prompts, judge)
        fd = frechet_distance_from_features(real_features, classifier_features(judge, images))
        results["guidance"][float(scale)] = {"fd": fd, "accuracy": accuracy, "per_attribute": per_attribute,
                                             "categories": categories}
        tables[f"guidance {scale:g}"] = categories
        say(f"  {scale:>8g}  {fd:>8.3f}  {accuracy:>10.3f}")
    say("  prompt accuracy by category (the true renders are the judge's ceiling):")
    say(format_categories(tables))
    return results


def format_probe(probe: dict) -> str:
    """relation_probe's result as a table: one row per relation, one column per kind of negative."""
    kinds = ("flip_relation", "swap_objects", "swap_colours")
    lines = [f"  {'relation':<18}" + "".join(f"{k:>15}" for k in kinds)]
    for relation, row in probe.items():
        lines.append(f"  {relation:<18}" + "".join(f"{100 * row[k][0]:>14.1f}%" if k in row else f"{'-':>15}"
                                                 for k in kinds))
    return "\n".join(lines)


def _evaluate_clip(model, ckpt, num_scenes, seed, say):
    """A mini-CLIP checkpoint: held-out retrieval and the relation probe (tokenizer.json beside it)."""
    tokenizer = zoo.load_tokenizer(Path(ckpt.path).parent / zoo.FILES["tokenizer"], model.config.text.vocab_size)
    retrieval = retrieval_accuracy(model, tokenizer, num_batches=8, batch_size=64, seed=seed)
    probe = relation_probe(model, tokenizer, num_scenes=num_scenes, seed=seed)
    say(f"evaluate {ckpt.path} (clip, step {ckpt.step}): held-out text->image top-1 {retrieval['top1']:.3f} "
        f"(chance {retrieval['chance']:.3f})")
    say(f"  relation probe on {num_scenes} held-out two-object scenes: the true caption beats its ... (50% = a bag of words)")
    say(format_probe(probe))
    return {"job": "clip", "retrieval": retrieval, "probe": probe}


def add_arguments(parser):
    parser.add_argument("checkpoint", help="a pixel.npz, latent.npz, unet.npz (text-to-image) or clip.npz checkpoint")
    parser.add_argument("--n", type=int, default=512,
                        help="images to sample (per guidance scale); the FD's noise floor shrinks with more")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--sampler", default="ddim", help=f"one of {', '.join(samplers.SAMPLERS)}")
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
    if args.sampler not in samplers.SAMPLERS:
        raise ValueError(f"--sampler must be one of {samplers.SAMPLERS}, got {args.sampler!r}")
    if args.spacing not in samplers.SPACINGS:
        raise ValueError(f"--spacing must be one of {samplers.SPACINGS}, got {args.spacing!r}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    evaluate_checkpoint(args.checkpoint, args.n, args.steps, args.sampler, args.guidance, args.seed,
                        args.classifier, args.device, args.batch_size, spacing=args.spacing, clip_x0=args.clip_x0)
    return 0
