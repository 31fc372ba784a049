"""Text-image retrieval with mini-CLIP, and the relation probe (does the text tower know word order?)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..datasets import captions, shapes
from ..models.clip import MiniCLIP
from ..nn.module import no_grad
from .judge import CLIP_HELDOUT_SEED


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


def format_probe(probe: dict) -> str:
    """relation_probe's result as a table: one row per relation, one column per kind of negative."""
    kinds = ("flip_relation", "swap_objects", "swap_colours")
    lines = [f"  {'relation':<18}" + "".join(f"{k:>15}" for k in kinds)]
    for relation, row in probe.items():
        lines.append(f"  {relation:<18}" + "".join(f"{100 * row[k][0]:>14.1f}%" if k in row else f"{'-':>15}"
                                                 for k in kinds))
    return "\n".join(lines)
