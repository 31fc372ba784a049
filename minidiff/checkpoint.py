"""Checkpoints: one ``.npz`` file of plain arrays plus a JSON header, never pickles.

Layout of the archive (every entry is an array; names are namespaced with "/"):

    __meta__               uint8 bytes of a JSON object {"format_version", "step", "config"}
    model/<param name>     the model's state_dict(), e.g. model/blocks.0.fc1.weight
    optim/<key>            AdamW.state_dict(), nested dicts flattened: optim/exp_avg/<param name>
    ema/<key>              EMA.state_dict():                           ema/shadow/<param name>
    extra/<key>            any other arrays the caller wants to keep (data statistics, ...)

Saving writes a temporary file in the same folder and renames it over the target
(``os.replace`` is atomic), so an interrupted save never leaves a half-written checkpoint.
Loading uses ``np.load(allow_pickle=False)``: a checkpoint can hold data but never code.

    save_checkpoint("outputs/run/ckpt.npz", model=model, optimizer=opt, ema=ema,
                    config=dataclasses.asdict(model.config), step=step)
    ckpt = load_checkpoint("outputs/run/ckpt.npz")
    load_into(model, ckpt, optimizer=opt, ema=ema)    # resume training
    load_into(model, ckpt, use_ema=True)              # sample with the averaged weights
"""
from __future__ import annotations

import dataclasses
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import backend
from .files import atomic_write

FORMAT_VERSION = 1
META_KEY = "__meta__"
SECTIONS = ("model", "optim", "ema", "extra")
MAX_CHECKPOINT_BYTES = 4 << 30      # the arrays of one checkpoint, unpacked (the largest shipped: 5 MB)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose contents do not fit what it is loaded into."""


@dataclasses.dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: host NumPy arrays and the JSON header."""
    path: str
    model_state: dict
    optim_state: dict | None
    ema_state: dict | None
    config: dict | None
    step: int
    extra: dict
    format_version: int = FORMAT_VERSION


# -- nested dict <-> flat "a/b/c" keys -------------------------------------------------------------
def _flatten(tree, prefix):
    """{"exp_avg": {"w": a}, "step": s} -> {prefix/exp_avg/w: a, prefix/step: s} (host arrays)."""
    flat = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"save_checkpoint: key {key!r} under {prefix!r} contains '/', which separates sections")
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = backend.to_numpy(value)
    return flat


def _unflatten(flat):
    """Inverse of ``_flatten`` with the section prefix already removed. A name that is both an
    array and a folder of arrays ("a" and "a/b"), or has an empty part ("a//b"), is a ValueError."""
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        if not all(parents) or not leaf:
            raise ValueError(f"entry name {name!r} has an empty part")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"entry {name!r} lies under {part!r}, which is an array")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"entry {name!r} is an array and a folder of arrays")
        node[leaf] = value
    return tree


# -- save ------------------------------------------------------------------------------------------
def save_checkpoint(path, model=None, optimizer=None, ema=None, config=None, step=0, extra=None,
                    dtype=None, compress=False):
    """Write model / optimizer / EMA states, a config dict and the step to one ``.npz`` (atomically).

    dtype:    store the model's and EMA's floating-point weights in this dtype (e.g. np.float16
              halves the size of shipped weights; loading casts back to the model's dtype).
              Optimizer moments are always stored as they are.
    config:   a JSON-serialisable dict (or a dataclass, converted with ``dataclasses.asdict``).
    extra:    {name: array} of anything else worth keeping.
    Returns the path written.
    """
    path = Path(path)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"save_checkpoint: config must be a dict or a dataclass, got {type(config).__name__}")
    try:
        header = json.dumps({"format_version": FORMAT_VERSION, "step": int(step), "config": config})
    except TypeError as exc:
        raise ValueError(f"save_checkpoint: config is not JSON-serialisable ({exc})") from None

    def store(state, weights_prefix):       # weights in the storage dtype, if one is asked for
        if dtype is None:
            return state
        return {k: (v.astype(dtype) if k.startswith(weights_prefix) and np.issubdtype(v.dtype, np.floating) else v)
                for k, v in state.items()}

    arrays = {META_KEY: np.frombuffer(header.encode("utf-8"), dtype=np.uint8)}
    if model is not None:
        arrays.update(store(_flatten(model.state_dict(), "model"), "model/"))
    if optimizer is not None:
        arrays.update(_flatten(optimizer.state_dict(), "optim"))
    if ema is not None:                     # the averaged weights, not the decay, take the storage dtype
        arrays.update(store(_flatten(ema.state_dict(), "ema"), "ema/shadow/"))
    if extra:
        arrays.update(_flatten(dict(extra), "extra"))

    with atomic_write(path) as f:           # readers see the old file or the new one, never half
        (np.savez_compressed if compress else np.savez)(f, **arrays)
    return path


# -- load ------------------------------------------------------------------------------------------
def _check_file_kind(path):
    """CheckpointError unless the file starts like a zip archive (an .npz); names what it is instead."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"checkpoint {path}: a single .npy array, not an .npz checkpoint")
    if head[:1] == b"\x80":
        raise CheckpointError(f"checkpoint {path} is a Python pickle (such as a PyTorch .pt file), not an "
                              ".npz checkpoint: minidiff never unpickles a file, because unpickling can run code")
    if not head.startswith(b"PK"):
        raise CheckpointError(f"checkpoint {path} is not an .npz archive (it does not start like a zip "
                              "file): corrupt, or another format")


def _read_archive(path):
    """{entry name: host array} of every entry (a damaged one fails here), within MAX_CHECKPOINT_BYTES."""
    key = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            unpacked = sum(info.file_size for info in archive.zip.infolist())
            if unpacked > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"checkpoint {path} unpacks to {unpacked:,} bytes, over the limit of "
                                      f"{MAX_CHECKPOINT_BYTES:,}: not a checkpoint minidiff writes")
            if META_KEY not in archive.files:
                raise CheckpointError(f"checkpoint {path}: no {META_KEY!r} entry (not a minidiff checkpoint)")
            arrays = {}
            for key in archive.files:
                arrays[key] = archive[key]
        return arrays
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError, ValueError, OverflowError, OSError,
            EOFError, KeyError) as exc:                 # what zipfile and numpy raise on damaged archives
        where = f" at entry {key!r}" if key else ""
        if "allow_pickle" in str(exc):      # an object array: numpy would have to unpickle it
            raise CheckpointError(f"checkpoint {path}{where} holds pickled Python objects: minidiff never "
                                  "unpickles, because unpickling can run code") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated{where} "
                              f"({type(exc).__name__}: {exc}); save it again") from None


def _read_meta(path, data) -> dict:
    """The JSON header, checked: an object with this format version, a config object (or null) and a
    step that is an integer >= 0."""
    if data.dtype != np.uint8 or data.ndim != 1:
        raise CheckpointError(f"checkpoint {path}: its {META_KEY!r} entry must be uint8 bytes, got {data.dtype} {data.shape}")
    try:
        meta = json.loads(data.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:          # bad UTF-8 or JSON, absurd nesting or numbers
        raise CheckpointError(f"checkpoint {path} is corrupt at entry {META_KEY!r} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); save it again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its header must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r}, this minidiff reads {FORMAT_VERSION}")
    if meta.get("config") is not None and not isinstance(meta["config"], dict):
        raise CheckpointError(f"checkpoint {path}: its config must be a JSON object, got "
                              f"{type(meta['config']).__name__}")
    step = meta.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path}: its step must be an integer >= 0, got {step!r}")
    return meta


def load_checkpoint(path, hint=None):
    """Read a checkpoint written by ``save_checkpoint``.

    hint:  what to tell the user when the file does not exist (e.g. the command that trains it).
    Raises FileNotFoundError (with the hint) or CheckpointError (corrupt, truncated, a pickle, not
    ours, a header of the wrong types, an entry that is not numbers).
    """
    path = Path(path)
    if not path.is_file():
        how = hint or "train one first (python -m minidiff train ...) or check the path"
        raise FileNotFoundError(f"checkpoint {path} not found: {how}")
    _check_file_kind(path)
    arrays = _read_archive(path)
    meta = _read_meta(path, arrays.pop(META_KEY))

    sections = {name: {} for name in SECTIONS}
    for name, value in arrays.items():
        section, _, rest = name.partition("/")
        if section not in sections or not rest:
            raise CheckpointError(f"checkpoint {path}: unexpected entry {name!r}")
        if value.dtype.kind not in "biuf":               # bool, integers, floats: what minidiff stores
            raise CheckpointError(f"checkpoint {path}: entry {name!r} holds {value.dtype} values, not numbers")
        sections[section][rest] = value
    try:
        optim_state, ema_state, extra = (_unflatten(sections[name]) for name in ("optim", "ema", "extra"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return Checkpoint(
        path=str(path),
        model_state=sections["model"],
        optim_state=optim_state or None,
        ema_state=ema_state or None,
        config=meta.get("config"),
        step=meta.get("step", 0),
        extra=extra,
        format_version=meta["format_version"],
    )


def _config_difference(model, ckpt):
    """' (config differs: field=a in the checkpoint, b in the model)' or '' when it cannot tell."""
    config = getattr(model, "config", None)
    if ckpt.config is None or not dataclasses.is_dataclass(config):
        return ""
    mine = dataclasses.asdict(config)
    for field, value in ckpt.config.items():
        if field in mine and json.loads(json.dumps(mine[field])) != value:
            return f" (config differs: {field}={value!r} in the checkpoint, {mine[field]!r} in the model)"
    return ""


def load_into(model, ckpt, use_ema=False, optimizer=None, ema=None):
    """Load a checkpoint (a ``Checkpoint`` or a path) into ``model`` and, optionally, an optimizer
    and an EMA (to resume training). ``use_ema=True`` loads the averaged weights into the model.

    A state that does not fit (another config, a missing or mis-shaped weight) raises
    CheckpointError naming the file and the first bad key. Returns the Checkpoint.
    """
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    if use_ema:
        if not ckpt.ema_state or "shadow" not in ckpt.ema_state:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no EMA weights; load with use_ema=False")
        weights = ckpt.ema_state["shadow"]
    else:
        weights = ckpt.model_state
    targets = [(model, weights, "model"), (optimizer, ckpt.optim_state, "optim"), (ema, ckpt.ema_state, "ema")]
    for target, state, section in targets:
        if target is None:
            continue
        if state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no {section} state")
        try:
            target.load_state_dict(state)
        except ValueError as exc:
            hint = _config_difference(model, ckpt) if section == "model" else ""
            raise CheckpointError(f"checkpoint {ckpt.path} does not fit the {type(target).__name__} "
                                  f"[{section}]: {exc}{hint}") from None
    return ckpt


def config_from_dict(cls, values, where="the checkpoint"):
    """A model config dataclass from its JSON form (lists back to tuples); anything that does not
    build one is a CheckpointError naming the class and the problem."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{cls.__name__}: the model config in {where} must be a JSON object, "
                              f"got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown fields {unknown} in {where}'s config")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**fields)
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{cls.__name__}: the model config in {where} is invalid ({exc})") from None
