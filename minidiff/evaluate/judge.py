"""What the attribute classifier says about images: its features, its predicted labels, and how
well images obey their prompts, by category (the classifier itself is models/classifier.py)."""
from __future__ import annotations

import numpy as np

from .. import backend, zoo
from ..datasets import captions, shapes
from ..models.classifier import HEAD_NAMES, HEADS, head_rows  # noqa: F401
from ..nn.module import no_grad
from .frechet import frechet_distance_from_features

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
def match_size(images, size: int):
    """Square images (N, C, H, H) at the classifier's size: average-pooled by an integer factor
    when larger, repeated (nearest neighbour) by an integer factor when smaller. Every judging
    function below applies it, so a 32x32 judge reads a 64x64 image as its 32x32 twin (a
    convolutional classifier would otherwise take any size and answer nonsense without an error)."""
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


def _batched(classifier, images, batch_size, fn):
    """Apply ``fn(classifier, x)`` to ``images`` (host or device) in batches, in eval mode.

    Each batch is moved to the device of the classifier's weights first."""
    weights = [p.data for p in classifier.parameters()[:1]]
    xp = backend.get_array_module(*weights)
    size = getattr(getattr(classifier, "config", None), "image_size", None)
    if size is not None and images.shape[2] != size:
        images = match_size(images, size)             # the judge sees images at its own size
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


def frechet_distance(real_images, generated_images, classifier, batch_size: int = 256) -> float:
    """FD between real and generated images in the classifier's penultimate feature space."""
    return frechet_distance_from_features(classifier_features(classifier, real_images, batch_size),
                                          classifier_features(classifier, generated_images, batch_size))
