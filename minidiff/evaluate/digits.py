"""Judging generated digits: class accuracy by digit, and the Fréchet distance beside its floor.

The judge is the digit classifier (``models/digit_classifier.py``, ``train digit_classifier``),
trained on the digits' training split; the real digits it compares samples with are the
held-out split, which no training run touches.

Class accuracy
    A sample asked for digit d ("the digit seven") is right when the classifier's arg-max is d.
    Reported per digit, then overall: the mean alone hides the digit the model cannot draw. The
    classifier's own accuracy on held-out real digits is the ceiling of this table.

Fréchet distance (FD) in the classifier's features
    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)   (``frechet.py``)
    between Gaussians fitted to the features of n held-out digits and of n samples. The estimate
    is biased upward for small n, so it is read beside its *floor*: the FD between the same n
    held-out digits and n other real digits (from the training split; both real, disjoint). A
    model that drew real digits would score the floor; the issue's target is FD < 2 x floor.

Images of any channel count and square size come in: RGB samples (the VAE draws grey digits as
three equal channels) are averaged to grey, and the size is matched to the classifier's.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..datasets import digits
from .frechet import frechet_distance_from_features
from .judge import _batched, classifier_features, format_categories, match_size
from .sampling import generate, sample_unconditional

HELDOUT_DIGITS = digits.NUM_CLASSES * digits.HELDOUT_PER_CLASS       # 500 digits no training run sees


def judge_view(images, classifier) -> np.ndarray:
    """Host images (N, C, H, H) in [-1, 1] as the classifier takes them: (N, in_channels, S, S)."""
    images = np.asarray(backend.to_numpy(images), np.float32)
    if images.ndim != 4:
        raise ValueError(f"digits: expected images (N, C, H, W), got shape {images.shape}")
    wanted = classifier.config.in_channels
    if images.shape[1] != wanted:
        if wanted != 1:
            raise ValueError(f"digits: the classifier takes {wanted}-channel images, got {images.shape[1]}")
        images = images.mean(axis=1, keepdims=True)            # grey = the mean of the channels
    return match_size(images, classifier.config.image_size)


def predict_digits(images, classifier, batch_size: int = 256) -> np.ndarray:
    """The classifier's digit for each image: int64 (N,)."""
    chunks = _batched(classifier, judge_view(images, classifier), batch_size,
                      lambda model, x: backend.to_numpy(model(x).argmax(axis=1)))
    return np.concatenate(chunks).astype(np.int64)


def digit_features(images, classifier, batch_size: int = 256) -> np.ndarray:
    """The classifier's penultimate features (N, feature_dim), float64 on the host."""
    return classifier_features(classifier, judge_view(images, classifier), batch_size)


def digit_accuracy(images, digits_asked, classifier, batch_size: int = 256) -> dict:
    """Class accuracy by digit: {"0 zero": (accuracy, count), ..., "9 nine": ..., "overall": ...}.

    ``digits_asked`` (N,): the digit each image was asked to be (or, for real digits, is). A digit
    never asked for is left out of the table."""
    asked = np.asarray(digits_asked, np.int64).reshape(-1)
    if len(asked) != len(images):
        raise ValueError(f"digit_accuracy: {len(images)} images but {len(asked)} digits asked")
    if not len(asked):
        raise ValueError("digit_accuracy: got no images")
    if asked.min() < 0 or asked.max() >= digits.NUM_CLASSES:
        raise ValueError(f"digit_accuracy: digits must be in [0, {digits.NUM_CLASSES}), got {sorted(set(asked))}")
    right = predict_digits(images, classifier, batch_size) == asked
    table = {f"{d} {digits.NAMES[d]}": (float(right[asked == d].mean()), int((asked == d).sum()))
             for d in range(digits.NUM_CLASSES) if (asked == d).any()}
    table["overall"] = (float(right.mean()), len(right))
    return table


def digit_frechet(real, generated, classifier, batch_size: int = 256) -> float:
    """FD between real and generated digits in the digit classifier's features."""
    return frechet_distance_from_features(digit_features(real, classifier, batch_size),
                                          digit_features(generated, classifier, batch_size))


def heldout_digits(n: int, size: int = 32):
    """(images float32 (n, 1, size, size), labels (n,)): n held-out digits, image i a digit i % 10
    (as ``digit_prompts`` asks), 28x28 padded to a larger size or area-averaged to a smaller one
    as the training data is."""
    if not 2 <= n <= HELDOUT_DIGITS:
        raise ValueError(f"digits: the held-out split has {HELDOUT_DIGITS} digits; ask for 2 to {HELDOUT_DIGITS}, got {n}")
    return _digits_in_turn("heldout", n, size)


def _digits_in_turn(split: str, n: int, size: int):
    """The first n of the split's images taken class by class in turn: a 0, a 1, ..., a 9, a 0, ..."""
    pixels, labels = digits.load_uint8(split)
    per_class = min(int((labels == d).sum()) for d in range(digits.NUM_CLASSES))
    by_class = [np.flatnonzero(labels == d)[:per_class] for d in range(digits.NUM_CLASSES)]
    order = np.stack(by_class, axis=1).reshape(-1)[:n]                 # (per_class, 10) read row by row
    return digits.to_images(pixels[order], size), labels[order].astype(np.int64)


def digit_frechet_floor(classifier, n: int, size: int | None = None, batch_size: int = 256) -> float:
    """Real vs real at sample size n: FD between n held-out digits and n training digits, both made
    at ``size`` (the model's image size; None: the classifier's) as the model's samples are."""
    size = classifier.config.image_size if size is None else size
    heldout, _ = heldout_digits(n, size)
    other, _ = _digits_in_turn("train", n, size)
    return digit_frechet(heldout, other, classifier, batch_size)


def digit_prompts(n: int):
    """(prompts, digits asked): digit i % 10 in the caption templates in turn ("a handwritten 7",
    "the digit seven", ...), so every digit and every wording is asked about equally."""
    asked = np.arange(n) % digits.NUM_CLASSES
    prompts = [digits.TEMPLATES[(i // digits.NUM_CLASSES) % len(digits.TEMPLATES)].format(
        numeral=d, name=digits.NAMES[d]) for i, d in enumerate(asked)]
    return prompts, asked


# ------------------------------------------------------------------ evaluating a digits checkpoint
def evaluate_digits(classifier, num_images: int, image_size: int, say, pipe=None, guidance_scales=(), sample=None,
                    **sampling):
    """The digits part of ``python -m minidiff evaluate``: prints and returns the scores.

    Text-to-image (``pipe``): for each guidance scale, n samples of ``digit_prompts(n)``, their
    class accuracy by digit and their FD beside the floor. Unconditional (``sample(n)`` -> images):
    the FD beside the floor. ``image_size``: the model's; the real digits are made at it too.
    ``sampling``: steps, seed, sampler, batch_size, spacing for ``generate``. n is at most the
    500 held-out digits."""
    n = min(num_images, HELDOUT_DIGITS)
    if n < num_images:
        say(f"  digits: the held-out split has {HELDOUT_DIGITS} digits, so n = {n} (not {num_images})")
    real, labels = heldout_digits(n, image_size)
    real_features = digit_features(real, classifier)
    floor = digit_frechet_floor(classifier, n, image_size)
    results = {"data": "digits", "num_images": n, "reference_fd": floor}
    say(f"  Fréchet distance in the digit classifier's features, {n} real vs {n} real (the floor): {floor:.3f}")
    if pipe is None:
        fd = frechet_distance_from_features(real_features, digit_features(sample(n), classifier))
        results.update(fd=fd, fd_ratio=fd / max(floor, 1e-12))
        say(f"  Fréchet distance, samples vs held-out digits: {fd:.3f} ({results['fd_ratio']:.2f} x the floor)")
        return results

    ceiling = digit_accuracy(real, labels, classifier)
    results.update(reference_accuracy=ceiling["overall"][0], reference_digits=ceiling, guidance={})
    tables = {"held-out": ceiling}
    prompts, asked = digit_prompts(n)
    say(f"  {'guidance':>8}  {'FD':>8}  {'FD/floor':>8}  {'accuracy':>8}")
    for scale in guidance_scales:
        images = np.clip(generate(pipe, prompts, scale, **sampling), -1.0, 1.0)
        by_digit = digit_accuracy(images, asked, classifier)
        fd = frechet_distance_from_features(real_features, digit_features(images, classifier))
        results["guidance"][float(scale)] = {"fd": fd, "fd_ratio": fd / max(floor, 1e-12),
                                             "accuracy": by_digit["overall"][0], "per_digit": by_digit}
        tables[f"scale {scale:g}"] = by_digit
        say(f"  {scale:>8g}  {fd:>8.3f}  {fd / max(floor, 1e-12):>8.2f}  {by_digit['overall'][0]:>8.3f}")
    say("  class accuracy by digit at each guidance scale (held-out: the judge on real digits, its ceiling):")
    say(format_categories(tables))
    return results


def unconditional_sampler(model, schedule, shape, decode=None, **sampling):
    """sample(n) -> n host images of an unconditional model, for ``evaluate_digits``."""
    return lambda n: sample_unconditional(model, schedule, n, shape, decode=decode, **sampling)
