"""The caption grammar of the shapes data: vocabulary, wording, parsing, and the label layout.

Captions
--------
One object:   "a red circle on the left", "there is a small blue square at the top",
              "in the middle, a big green triangle", "a yellow square"
Two objects:  "a green circle above a large red square", "a blue square left of a yellow triangle"

Every caption names every shape and every colour. The size word and (for one object) the
position phrase may be left out: **an omitted attribute means "any value is fine"**.
`parse_caption` returns ``None`` for it, and `matches_prompt` treats ``None`` as a wildcard, so a
caption always agrees with the labels of the image it was drawn with. Synonyms are canonicalised
("big" -> large, "little" -> small, "in the middle" -> center, "under" -> below, "left of" ->
to the left of). Captions are generated from templates, and each template is also turned into a
regular expression, so `parse_caption` is the exact inverse of `caption_for`.

Attributes and labels
---------------------
A scene's *attributes* are a dict with the keys LABEL_KEYS holding words (``None`` = absent or
omitted); its *labels* are the same keys holding vocabulary indices (-1 = absent):

    num_objects  1 or 2
    shape, colour, size           object 1 (the only object, or the subject of the relation)
    position     POSITIONS index of object 1 in one-object scenes; -1 in two-object scenes
    shape2, colour2, size2        object 2 (the reference); -1 in one-object scenes
    relation     RELATIONS index (object 1 relative to object 2); -1 in one-object scenes
"""
from __future__ import annotations

import re

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("above", "below", "to the left of", "to the right of")
# colours outside the base vocabulary, used only when asked for (the pink LoRA fine-tune): the shipped
# models, their classifier and every default caption know COLOURS alone
EXTRA_COLOURS = ("pink",)
LABEL_KEYS = ("num_objects", "shape", "colour", "size", "position",
              "shape2", "colour2", "size2", "relation")
_VOCABULARY = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS,
               "shape2": SHAPES, "colour2": COLOURS, "size2": SIZES, "relation": RELATIONS}


# The first phrase of each tuple is the canonical word; the others are synonyms used less often.
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "center": ("in the center", "in the middle", "at the center", "in the centre"),
}
RELATION_PHRASES = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "to the left of": ("to the left of", "left of"),
    "to the right of": ("to the right of", "right of"),
}
# "{object}" expands to "a [size] colour shape"; the first template of each list is the most common.
ONE_OBJECT_TEMPLATES = ("{object} {position}", "there is {object} {position}",
                        "{position}, {object}", "a picture of {object} {position}")
NO_POSITION_TEMPLATES = ("{object}", "there is {object}", "a picture of {object}")
TWO_OBJECT_TEMPLATES = ("{object} {relation} {object2}", "there is {object} {relation} {object2}",
                        "a picture of {object} {relation} {object2}")
CANONICAL_PROBABILITY = 0.7      # chance of the canonical word / first template
OMIT_SIZE_PROBABILITY = 0.3      # a caption leaves out "small"/"large" (= either size)
OMIT_POSITION_PROBABILITY = 0.1  # a one-object caption leaves out its position (= anywhere)


def _pick(rng, options):
    """The first option with probability 0.7, else one of the others uniformly."""
    if len(options) == 1 or rng.random() < CANONICAL_PROBABILITY:
        return options[0]
    return options[1 + int(rng.integers(len(options) - 1))]


def _object_phrase(shape, colour, size):
    words = ([size] if size else []) + [colour, shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def caption_for(attributes: dict, rng, omit_size_probability: float = OMIT_SIZE_PROBABILITY,
                omit_position_probability: float = OMIT_POSITION_PROBABILITY, extra_colours=()) -> str:
    """A caption for one scene's attributes (words, as from `attributes_from_labels`).

    ``rng``: a NumPy Generator or an int seed. Size words, and the position of a single object,
    are omitted at random with the given probabilities (meaning "any"); ``None`` attributes are
    always omitted. ``extra_colours``: words of EXTRA_COLOURS also allowed as colours.
    """
    rng = np.random.default_rng(rng)          # a Generator passes through unchanged
    a = validate_attributes(attributes, extra_colours)

    def size_word(key):
        if a[key] is None or rng.random() < omit_size_probability:
            return None
        return _pick(rng, SIZE_WORDS[a[key]])

    obj = _object_phrase(a["shape"], a["colour"], size_word("size"))
    if a["num_objects"] == 2:
        obj2 = _object_phrase(a["shape2"], a["colour2"], size_word("size2"))
        template = _pick(rng, TWO_OBJECT_TEMPLATES)
        return template.format(object=obj, relation=_pick(rng, RELATION_PHRASES[a["relation"]]),
                               object2=obj2)
    if a["position"] is None or rng.random() < omit_position_probability:
        return _pick(rng, NO_POSITION_TEMPLATES).format(object=obj)
    template = _pick(rng, ONE_OBJECT_TEMPLATES)
    return template.format(object=obj, position=_pick(rng, POSITION_PHRASES[a["position"]]))


def _alternation(name, phrases):
    """A named regex group matching any phrase of ``{canonical: synonyms}``, longest first."""
    words = sorted((p for group in phrases.values() for p in group), key=len, reverse=True)
    return f"(?P<{name}>{'|'.join(re.escape(w) for w in words)})"


def _object_regex(suffix):
    size = _alternation("size" + suffix, SIZE_WORDS)
    colour = _alternation("colour" + suffix, {c: (c,) for c in COLOURS})
    shape = _alternation("shape" + suffix, {s: (s,) for s in SHAPES})
    return f"(?:a|an|one|the) (?:{size} )?{colour} {shape}"


def _template_regex(template):
    pattern = re.escape(template).replace(r"\{object\}", _object_regex(""))
    pattern = pattern.replace(r"\{object2\}", _object_regex("2"))
    pattern = pattern.replace(r"\{position\}", _alternation("position", POSITION_PHRASES))
    pattern = pattern.replace(r"\{relation\}", _alternation("relation", RELATION_PHRASES))
    return re.compile(pattern)


_PATTERNS = [(_template_regex(t), n) for templates, n in ((ONE_OBJECT_TEMPLATES, 1),
             (NO_POSITION_TEMPLATES, 1), (TWO_OBJECT_TEMPLATES, 2)) for t in templates]
_CANONICAL = {phrase: word for table in (SIZE_WORDS, POSITION_PHRASES, RELATION_PHRASES)
              for word, phrases in table.items() for phrase in phrases}


def parse_caption(text: str) -> dict:
    """Caption -> attributes dict (keys LABEL_KEYS, canonical words, ``None`` = omitted/absent).

    The inverse of the caption grammar. Case, surrounding spaces, repeated spaces and a final
    full stop are ignored. Raises ValueError naming the text if it is not in the grammar.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_caption: expected a str, got {type(text).__name__}")
    normalised = " ".join(text.lower().split()).rstrip(".").strip()
    for pattern, num_objects in _PATTERNS:
        found = pattern.fullmatch(normalised)
        if found:
            attributes = dict.fromkeys(LABEL_KEYS)
            attributes["num_objects"] = num_objects
            for key, value in found.groupdict().items():
                attributes[key] = _CANONICAL.get(value, value) if value else None
            return attributes
    raise ValueError(
        f"parse_caption: {text!r} is not in the shapes grammar; expected e.g. "
        "'a small red circle on the left' or 'a green circle above a large blue square' "
        f"(shapes {SHAPES}, colours {COLOURS}, sizes {SIZES}, positions {POSITIONS}, "
        f"relations {RELATIONS})")


def validate_attributes(attributes: dict, extra_colours=()) -> dict:
    """All LABEL_KEYS present (missing -> None), words checked against the vocabulary (the colours
    and, when asked for, the ``extra_colours`` of EXTRA_COLOURS)."""
    unknown_extra = [c for c in extra_colours if c not in EXTRA_COLOURS]
    if unknown_extra:
        raise ValueError(f"scene attributes: extra colour {unknown_extra[0]!r} is not one of {EXTRA_COLOURS}")
    unknown = set(attributes) - set(LABEL_KEYS)
    if unknown:
        raise ValueError(f"scene attributes: unknown keys {sorted(unknown)}; allowed {LABEL_KEYS}")
    a = dict.fromkeys(LABEL_KEYS) | dict(attributes)
    if a["num_objects"] not in (1, 2):
        raise ValueError(f"scene attributes: num_objects must be 1 or 2, got {a['num_objects']!r}")
    for key, vocabulary in _VOCABULARY.items():
        vocabulary = vocabulary + tuple(extra_colours) if key in ("colour", "colour2") else vocabulary
        if a[key] is not None and a[key] not in vocabulary:
            raise ValueError(f"scene attributes: {key}={a[key]!r} is not one of {vocabulary}")
    needed = ("shape", "colour") + (("shape2", "colour2", "relation") if a["num_objects"] == 2 else ())
    missing = [k for k in needed if a[k] is None]
    if missing:
        raise ValueError(f"scene attributes: {missing} must be given for a "
                         f"{a['num_objects']}-object scene, got {attributes}")
    return a


def attributes_from_labels(labels: dict, i: int) -> dict:
    """Row ``i`` of a labels dict as an attributes dict of words (``None`` where -1)."""
    a = {"num_objects": int(labels["num_objects"][i])}
    for key, vocabulary in _VOCABULARY.items():
        index = int(labels[key][i])
        a[key] = vocabulary[index] if index >= 0 else None
    return a


def labels_from_attributes(attributes_list) -> dict:
    """A list of attributes dicts -> labels dict of int64 arrays (-1 for ``None``)."""
    rows = [validate_attributes(a) for a in attributes_list]
    labels = {"num_objects": np.array([a["num_objects"] for a in rows], np.int64)}
    for key, vocabulary in _VOCABULARY.items():
        labels[key] = np.array([vocabulary.index(a[key]) if a[key] is not None else -1
                                for a in rows], np.int64)
    return labels


# "A above B" and "B below A" describe the same picture. An image alone cannot say which object
# a caption named first, so whatever judges images (the attribute classifier) works with one
# canonical form: the relation is "above" or "to the left of", the objects swapped when needed.
_INVERSE = {"below": "above", "to the right of": "to the left of"}
_OBJECT2 = (("shape", "shape2"), ("colour", "colour2"), ("size", "size2"))


def canonical_attributes(attributes: dict) -> dict:
    """The same scene with relation in {"above", "to the left of"} (subject and reference swapped
    for "below" and "to the right of"). One-object scenes come back unchanged."""
    relation = attributes.get("relation")
    if relation not in _INVERSE:
        return dict(attributes)
    out = dict(attributes, relation=_INVERSE[relation])
    for first, second in _OBJECT2:
        out[first], out[second] = attributes.get(second), attributes.get(first)
    return out


def canonical_labels(labels: dict) -> dict:
    """``canonical_attributes`` for a dict of label arrays (a copy; -1 stays -1)."""
    out = {key: np.array(value, copy=True) for key, value in labels.items()}
    relation = np.asarray(labels["relation"])
    swap = (relation == RELATIONS.index("below")) | (relation == RELATIONS.index("to the right of"))
    out["relation"][relation == RELATIONS.index("below")] = RELATIONS.index("above")
    out["relation"][relation == RELATIONS.index("to the right of")] = RELATIONS.index("to the left of")
    for first, second in _OBJECT2:
        out[first][swap], out[second][swap] = labels[second][swap], labels[first][swap]
    return out


def prompt_agreement(prompt: dict, scene: dict) -> dict:
    """{attribute: bool} for every attribute the prompt names (``None`` in the prompt = any)."""
    agreement = {"num_objects": prompt["num_objects"] == scene["num_objects"]}
    for key in _VOCABULARY:
        if prompt.get(key) is not None:
            agreement[key] = prompt[key] == scene.get(key)
    return agreement


def matches_prompt(prompt: dict, scene: dict) -> bool:
    """True when the scene has every attribute the (parsed) prompt asks for."""
    return all(prompt_agreement(prompt, scene).values())


# -- which caption describes which image ------------------------------------------------------------
# Used by contrastive training (several images of a batch may fit one caption: "a red circle" fits
# every red circle) and by retrieval scoring. Written once; the arithmetic is array broadcasting, so
# the same function runs on host label matrices and on device ones.
def label_matrix(labels: dict):
    """A labels dict -> int64 (N, K) matrix, columns in LABEL_KEYS order (-1 = absent / not said),
    in canonical form ("B below A" written as "A above B", see ``canonical_labels``), so that two
    descriptions of one picture compare equal."""
    labels = canonical_labels(labels)
    return np.stack([np.asarray(labels[key], np.int64) for key in LABEL_KEYS], axis=1)


def caption_label_matrix(captions) -> np.ndarray:
    """(N, K) labels of what each caption *says* (-1 where it says nothing: any value fits)."""
    return label_matrix(labels_from_attributes([parse_caption(c) for c in captions]))


def label_matches(image_labels, caption_labels):
    """(N_img, N_txt) bool: [i, j] True when caption j describes image i, i.e. every attribute the
    caption states (label >= 0) equals image i's. Both arguments are (N, K) label matrices, NumPy
    or CuPy (the result lives where they do)."""
    not_said = caption_labels[None, :, :] == -1                           # (1, N_txt, K): any value fits
    agrees = image_labels[:, None, :] == caption_labels[None, :, :]       # (N_img, N_txt, K)
    return (not_said | agrees).all(axis=2)


def caption_matches(image_labels: dict, captions) -> np.ndarray:
    """``label_matches`` from a labels dict and caption strings, on the host."""
    return label_matches(label_matrix(image_labels), caption_label_matrix(captions))


# -- the fixed prompt set of the evaluation ---------------------------------------------------------
def _object(colour, shape, size=None):
    words = ([size] if size else []) + [colour, shape]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _fixed_prompts():
    """30 one-object prompts: every colour with every shape, and every colour at every position
    (object i: colour i mod 6, shape (i // 6) mod 3, position i mod 5, a size word on two thirds),
    then 12 two-object prompts, each relation three times, the two objects of different colours."""
    one = [_object(COLOURS[i % 6], SHAPES[(i // 6) % 3], (None, "small", "large")[(i // 5) % 3])
           + " " + POSITION_PHRASES[POSITIONS[i % 5]][0] for i in range(30)]
    two = [_object(COLOURS[j % 6], SHAPES[(j // 4) % 3]) + " " + RELATIONS[j % 4] + " "
           + _object(COLOURS[(j + 3) % 6], SHAPES[(j // 4 + 1 + j % 2) % 3]) for j in range(12)]
    return tuple(one + two)


FIXED_PROMPTS = _fixed_prompts()     # e.g. "a red circle on the left", "a green square below a yellow triangle"


# -- the evaluation's prompt set, balanced by category ---------------------------------------------
def _category_prompts():
    """FIXED_PROMPTS' 30 one-object prompts, then 10 two-object prompts per relation (each phrase
    of the relation in turn: "above", "over"; "below", "under", "beneath"; ...), the two objects
    always of different colours and, every other prompt, of different shapes: 70 prompts."""
    one = list(FIXED_PROMPTS[:30])
    two = []
    for r, relation in enumerate(RELATIONS):
        phrases = RELATION_PHRASES[relation]
        for k in range(10):
            c1, c2 = COLOURS[(k + r) % 6], COLOURS[(k + r + 1 + k % 5) % 6]
            s1 = SHAPES[(k + r) % 3]
            s2 = SHAPES[(k + r + (k % 2)) % 3]
            two.append(f"{_object(c1, s1)} {phrases[k % len(phrases)]} {_object(c2, s2)}")
    return tuple(one + two)


CATEGORY_PROMPTS = _category_prompts()


# -- hard negatives: captions that differ from the truth only in order ------------------------------
def hard_negatives(attributes: dict) -> dict:
    """For a two-object scene, the wrong scenes a bag of words cannot tell from it:

        flip_relation   "A above B" -> "A below B"
        swap_objects    "A above B" -> "B above A"
        swap_colours    "a red circle above a blue square" -> "a blue circle above a red square"

    Returns {kind: attributes}; a kind that would describe the same scene (two identical objects,
    or one colour for both) is left out. One-object scenes have none: {}."""
    a = validate_attributes(attributes)
    if a["num_objects"] != 2:
        return {}
    flipped = {"above": "below", "below": "above", "to the left of": "to the right of",
               "to the right of": "to the left of"}
    out = {"flip_relation": dict(a, relation=flipped[a["relation"]])}
    if (a["shape"], a["colour"], a["size"]) != (a["shape2"], a["colour2"], a["size2"]):
        out["swap_objects"] = dict(a, shape=a["shape2"], colour=a["colour2"], size=a["size2"],
                                   shape2=a["shape"], colour2=a["colour"], size2=a["size"])
    if a["colour"] != a["colour2"]:
        out["swap_colours"] = dict(a, colour=a["colour2"], colour2=a["colour"])
    return out


_OPPOSITE_POSITION = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
HARD_NEGATIVE_KINDS = ("flip_relation", "swap_objects", "swap_colours")


def hard_negative_captions(captions, seed=0) -> list:
    """Three wrong captions per caption, made of its own words in another order, for contrastive
    training: [flipped relation, swapped objects, swapped colours] for two objects; for one object
    its position mirrored ("on the left" -> "on the right") where it says one. A kind a caption
    cannot have takes one of the caption's other negatives, or (none at all: "a red circle") the
    next caption in the list, an ordinary negative. Omitted words stay omitted."""
    rng = np.random.default_rng(seed)
    parsed = [parse_caption(c) for c in captions]
    out = []
    for i, said in enumerate(parsed):
        if said["num_objects"] == 2:
            negatives = hard_negatives(said)
            found = [negatives[k] for k in HARD_NEGATIVE_KINDS if k in negatives]
            kinds = [negatives.get(k, found[j % len(found)]) for j, k in enumerate(HARD_NEGATIVE_KINDS)]
            texts = [caption_for(a, rng, 0.0, 0.0) for a in kinds]
        elif said["position"] in _OPPOSITE_POSITION:
            texts = [caption_for(dict(said, position=_OPPOSITE_POSITION[said["position"]]), rng, 0.0, 0.0)] * 3
        else:
            texts = [captions[(i + 1) % len(captions)]] * 3
        out.append(texts)
    return out
