"""Judging what the fine-tunes were made for (train/finetune.py trains them): a new colour that the
base model never saw, and a ControlNet that follows an outline.

All of it works on host images (N, 3, H, W) in [-1, 1] with the shapes palette and the attribute
classifier; nothing here samples (the caller does, so these functions judge anyone's images).

* **Colour by pixels.** Object pixels are those farther than ``background_distance`` from the grey
  background (RGB in [0, 1]); each votes for the nearest palette colour (the six base colours and
  pink); the majority is the object's colour. The classifier cannot say pink: it never saw it.
* **Shape and place by the classifier**, with the colour left out of the prompt it is compared to.
* **Overlap** of two masks A, B: IoU = |A and B| / |A or B| (1 when both are empty).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..datasets import shapes
from ..nn.module import no_grad
from .judge import predict_labels

NEW_COLOURS = ("pink",)
PALETTE_NAMES = shapes.COLOURS + NEW_COLOURS


def object_mask(images, background_distance: float = 0.25) -> np.ndarray:
    """(N, H, W) bool: the pixels farther than ``background_distance`` from the background grey."""
    rgb = (np.asarray(images, np.float32).transpose(0, 2, 3, 1) + 1) / 2                # (N, H, W, 3)
    return np.linalg.norm(rgb - shapes.BACKGROUND, axis=-1) > background_distance


def object_colours(images, background_distance: float = 0.25) -> np.ndarray:
    """The palette colour (index into PALETTE_NAMES) most of each image's object pixels are nearest
    to (meant for one-object scenes: with two, the larger object wins); -1 for an image with no
    object pixel."""
    palette = np.concatenate([shapes.RGB, np.array([shapes.EXTRA_RGB[c] for c in NEW_COLOURS], np.float32)])
    rgb = (np.asarray(images, np.float32).transpose(0, 2, 3, 1) + 1) / 2
    is_object = object_mask(images, background_distance)
    nearest = np.linalg.norm(rgb[..., None, :] - palette, axis=-1).argmin(axis=-1)        # (N, H, W)
    out = np.full(len(rgb), -1)
    for i in range(len(rgb)):
        if is_object[i].any():
            out[i] = np.bincount(nearest[i][is_object[i]], minlength=len(palette)).argmax()
    return out


def colour_share(images, colour: str) -> float:
    """Share of images whose object is mostly ``colour`` (a base colour or a new one)."""
    return float(np.mean(object_colours(images) == PALETTE_NAMES.index(colour)))


def _as_base_prompt(prompt: str, word: str) -> str:
    """The prompt with the new colour word swapped for a base colour, so the grammar parses it (the
    colour itself is then ignored)."""
    return " ".join("red" if w == word else w for w in prompt.split())


def new_colour_judgement(images, prompts, classifier, colour: str = "pink", word: str | None = None) -> dict:
    """Per image: is the object ``colour`` (by pixels), and are its shape and place the prompt's (by
    the classifier, one object predicted)? ``word``: how the prompts spell the colour (default the
    colour's own name; "<pink>" for a learned token). Returns shares for "colour", "shape",
    "position" and "all" (all three at once), and the per-image booleans under "per_image"."""
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"new_colour_judgement: {len(images)} images but {len(prompts)} prompts")
    word = word or colour
    is_colour = object_colours(images) == PALETTE_NAMES.index(colour)
    predicted = predict_labels(classifier, images)
    shape_ok, place_ok = [], []
    for i, prompt in enumerate(prompts):
        said = shapes.parse_caption(_as_base_prompt(prompt, word))
        scene = shapes.attributes_from_labels(predicted, i)
        one = scene["num_objects"] == 1
        shape_ok.append(one and scene["shape"] == said["shape"])
        place_ok.append(one and (said["position"] is None or scene["position"] == said["position"]))
    shape_ok, place_ok = np.array(shape_ok), np.array(place_ok)
    every = is_colour & shape_ok & place_ok
    return {"colour": float(is_colour.mean()), "shape": float(shape_ok.mean()),
            "position": float(place_ok.mean()), "all": float(every.mean()), "per_image": every}


def mask_iou(a, b) -> np.ndarray:
    """IoU of boolean masks (N, H, W) row by row: |a and b| / |a or b|, 1 where both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, (a & b).sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)


def control_scenes(n: int, seed: int = 0, size: int = 32) -> dict:
    """Held-out one-object scenes to draw controls from, each with a prompt that keeps the scene's
    shape and asks for a colour drawn at random (so following the outline and obeying the colour are
    two separate questions). {"images", "masks" (N, H, W) the filled shapes, "prompts"}."""
    from .judge import HELDOUT_SEED
    batch = shapes.sample(n, seed=(seed, HELDOUT_SEED, 17), size=size, two_object_fraction=0.0)
    rng = np.random.default_rng((seed, 17))
    colours = rng.choice(len(shapes.COLOURS), size=n)
    prompts = [f"a {shapes.COLOURS[c]} {shapes.SHAPES[s]}"
               for c, s in zip(colours, np.asarray(batch["labels"]["shape"]))]
    return {"images": batch["images"], "masks": object_mask(batch["images"]), "prompts": prompts}


def control_judgement(images, masks, prompts, classifier, threshold: float = 0.7) -> dict:
    """How well generated images follow their outlines' filled shapes ``masks`` and obey the colour
    in ``prompts``: {"iou": (N,) IoU per image, "iou_ok": share with IoU >= threshold, "colour":
    share whose predicted colour is the prompt's, "median_iou"}."""
    iou = mask_iou(object_mask(images), masks)
    predicted = predict_labels(classifier, images)
    colour_ok = [shapes.attributes_from_labels(predicted, i)["colour"] == shapes.parse_caption(p)["colour"]
                 for i, p in enumerate(prompts)]
    return {"iou": iou, "iou_ok": float((iou >= threshold).mean()), "median_iou": float(np.median(iou)),
            "colour": float(np.mean(colour_ok))}


def reconstruction_report(vae, n: int = 64, seed: int = 0) -> dict:
    """Share of held-out reconstructions Dec(mean of q(z | x)) whose object is drawn in its own colour:
    "pink" over one-object pink scenes, "base" over one-object scenes in the six base colours."""
    xp = backend.get_xp()
    report = {}
    for name, fraction in (("pink", 1.0), ("base", 0.0)):
        batch = shapes.sample(n, seed=(seed, 7, 18), size=vae.config.image_size, two_object_fraction=0.0,
                              extra_colours=("pink",), extra_fraction=fraction)
        with no_grad():
            rec = backend.to_numpy(vae.decode(vae.encode(xp.asarray(batch["images"])).mode()))
        truth = object_colours(batch["images"])
        report[name] = float(np.mean(object_colours(rec) == truth))
    return report
