"""Checkpoints: round trips, bitwise resume, atomic writes, and clear errors for bad files."""
import dataclasses
import json
import os
import pickle
import re

import numpy as np
import pytest

from minidiff import checkpoint as ckpt_mod
from minidiff import zoo
from minidiff.checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint
from minidiff.models.mlp import MLPConfig, MLPDenoiser
from minidiff.nn import functional as F
from minidiff.optim import EMA, AdamW, clip_grad_norm


def _train(model, optimizer, ema, steps):
    """A regression step per ``step``: the batch is a function of the step number, so a resumed run
    sees exactly the batches an uninterrupted one would."""
    for step in steps:
        rng = np.random.default_rng(step)
        x = rng.standard_normal((16, 2)).astype(np.float32)
        t = rng.integers(0, 1000, size=16)
        target = rng.standard_normal((16, 2)).astype(np.float32)
        model.zero_grad()
        loss, cache = F.mse_loss(model(x, t), target)
        model.backward(F.mse_loss_backward(1.0, cache))
        clip_grad_norm(model, 1.0)
        optimizer.step(lr=1e-2 * (step + 1) / 10)
        ema.update()


def _fresh(config=MLPConfig.tiny(), seed=0):
    model = MLPDenoiser(config, seed=seed)
    return model, AdamW(model, lr=1e-2, weight_decay=0.01), EMA(model, decay=0.9)


def test_round_trip_restores_every_section(tmp_path):
    model, opt, ema = _fresh()
    _train(model, opt, ema, range(3))
    path = save_checkpoint(tmp_path / "run.npz", model=model, optimizer=opt, ema=ema,
                           config=model.config, step=3, extra={"data_mean": np.array([0.5, -0.5])})
    ckpt = load_checkpoint(path)
    assert ckpt.step == 3 and ckpt.config == dataclasses.asdict(model.config)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ckpt.model_state[name], value)
    assert int(ckpt.optim_state["step"]) == 3
    np.testing.assert_array_equal(ckpt.optim_state["exp_avg"]["in_proj.weight"], opt.exp_avg["in_proj.weight"])
    np.testing.assert_array_equal(ckpt.ema_state["shadow"]["out_proj.bias"], ema.shadow["out_proj.bias"])
    np.testing.assert_array_equal(ckpt.extra["data_mean"], [0.5, -0.5])


def test_resume_from_checkpoint_is_bitwise_identical_to_training_straight_through(tmp_path):
    k = 4
    straight = _fresh()
    _train(*straight, range(2 * k))

    first = _fresh()
    _train(*first, range(k))
    model, opt, ema = first
    save_checkpoint(tmp_path / "half.npz", model=model, optimizer=opt, ema=ema, config=model.config, step=k)
    resumed = _fresh(seed=123)                           # other initial weights: all must be overwritten
    ckpt = load_into(resumed[0], tmp_path / "half.npz", optimizer=resumed[1], ema=resumed[2])
    _train(*resumed, range(ckpt.step, 2 * k))

    for (name, a), (_, b) in zip(straight[0].named_parameters(), resumed[0].named_parameters()):
        assert np.array_equal(a.data, b.data), name
    for name in straight[2].shadow:
        assert np.array_equal(straight[2].shadow[name], resumed[2].shadow[name]), name
    assert resumed[1].step_count == 2 * k


def test_use_ema_loads_the_averaged_weights(tmp_path):
    model, opt, ema = _fresh()
    _train(model, opt, ema, range(2))
    save_checkpoint(tmp_path / "c.npz", model=model, ema=ema)
    other = MLPDenoiser(MLPConfig.tiny(), seed=5)
    load_into(other, tmp_path / "c.npz", use_ema=True)
    np.testing.assert_array_equal(other.state_dict()["in_proj.weight"], ema.shadow["in_proj.weight"])


def test_float16_storage_halves_the_file_and_loads_back_as_float32(tmp_path):
    model = MLPDenoiser(MLPConfig.quick(), seed=0)
    ema = EMA(model, decay=0.999)
    full = save_checkpoint(tmp_path / "full.npz", model=model, ema=ema)
    half = save_checkpoint(tmp_path / "half.npz", model=model, ema=ema, dtype=np.float16)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    stored = load_checkpoint(half)
    assert stored.model_state["in_proj.weight"].dtype == np.float16
    assert stored.ema_state["shadow"]["in_proj.weight"].dtype == np.float16
    assert stored.ema_state["decay"] == 0.999                # hyperparameters keep their precision
    other = MLPDenoiser(MLPConfig.quick(), seed=1)
    load_into(other, half)
    w, w16 = model.state_dict()["in_proj.weight"], other.state_dict()["in_proj.weight"]
    assert w16.dtype == np.float32
    np.testing.assert_allclose(w16, w, rtol=1e-3, atol=1e-4)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz not found: run lesson 03 first"):
        load_checkpoint(tmp_path / "nope.npz", hint="run lesson 03 first")


def test_truncated_file_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "t.npz", model=MLPDenoiser(MLPConfig.tiny()), step=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t\.npz is corrupt or truncated"):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_damaged_entry_is_a_checkpoint_error_naming_the_key(tmp_path):
    model = MLPDenoiser(MLPConfig.tiny())
    path = save_checkpoint(tmp_path / "d.npz", model=model)
    data = bytearray(path.read_bytes())
    weight = model.state_dict()["blocks.1.fc2.weight"].tobytes()
    at = bytes(data).find(weight)                    # entries are stored uncompressed
    assert at > 0
    data[at + 5] ^= 0xFF                             # one flipped byte: the zip CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"d\.npz .*'model/blocks\.1\.fc2\.weight'"):
        load_checkpoint(path)


def test_loading_into_a_model_of_another_config_names_file_and_key(tmp_path):
    path = save_checkpoint(tmp_path / "small.npz", model=MLPDenoiser(MLPConfig.tiny()), config=MLPConfig.tiny())
    bigger = MLPDenoiser(dataclasses.replace(MLPConfig.tiny(), hidden_dim=16))
    with pytest.raises(CheckpointError, match=r"small\.npz.*'time_fc1\.weight'.*hidden_dim=8 in the checkpoint"):
        load_into(bigger, path)


def test_loading_a_model_with_fewer_blocks_names_the_missing_key(tmp_path):
    path = save_checkpoint(tmp_path / "one.npz", model=MLPDenoiser(dataclasses.replace(MLPConfig.tiny(), num_blocks=1)))
    with pytest.raises(CheckpointError, match=r"one\.npz.*missing key 'blocks\.1\.norm\.weight'"):
        load_into(MLPDenoiser(MLPConfig.tiny()), path)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    model = MLPDenoiser(MLPConfig.tiny())
    path = save_checkpoint(tmp_path / "keep.npz", model=model, step=7)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, step=8)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.npz"]


def test_file_without_header_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minidiff checkpoint"):
        load_checkpoint(path)


# -- hostile files: every one a CheckpointError that says what is wrong ---------------------------------
def _with_header(path, header):
    """Rewrite a checkpoint's JSON header (``header`` any JSON value), keeping its arrays."""
    arrays = dict(np.load(path))
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("header, message", [
    ([1, 2], "header must be a JSON object, got list"),
    ({"format_version": 1, "config": [1]}, "config must be a JSON object, got list"),
    ({"format_version": 1, "config": "x"}, "config must be a JSON object, got str"),
    ({"format_version": 1, "step": "x"}, "step must be an integer >= 0, got 'x'"),
    ({"format_version": 1, "step": True}, "step must be an integer >= 0, got True"),
    ({"format_version": 1, "step": -1}, "step must be an integer >= 0, got -1"),
    ({"format_version": "1"}, "format version '1'"),
])
def test_a_header_of_the_wrong_types_is_a_checkpoint_error(tmp_path, header, message):
    path = _with_header(save_checkpoint(tmp_path / "h.npz", model=MLPDenoiser(MLPConfig.tiny())), header)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b"\xff\xfe", b'{"format_version": 1, "step": 1' + b"9" * 5000 + b"}"])
def test_a_header_that_is_not_json_is_corrupt(tmp_path, raw):
    path = save_checkpoint(tmp_path / "h.npz", model=MLPDenoiser(MLPConfig.tiny()))
    arrays = dict(np.load(path))
    arrays["__meta__"] = np.frombuffer(raw, np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="corrupt at entry '__meta__'"):
        load_checkpoint(path)


def test_a_pickle_file_is_named_as_one_and_never_unpickled(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weights": [1.0]}))
    with pytest.raises(CheckpointError, match="is a Python pickle .* never unpickles"):
        load_checkpoint(path)


def test_an_entry_of_pickled_objects_is_named_as_such(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, __meta__=np.frombuffer(b'{"format_version": 1}', np.uint8),
             **{"model/w": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="'model/w' holds pickled Python objects"):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [np.array(["abc"]), np.array([1 + 2j]), np.zeros(2, "datetime64[s]")])
def test_an_entry_that_is_not_numbers_is_refused(tmp_path, value):
    path = tmp_path / "strings.npz"
    np.savez(path, __meta__=np.frombuffer(b'{"format_version": 1}', np.uint8), **{"model/w": value})
    with pytest.raises(CheckpointError, match=re.escape(f"'model/w' holds {value.dtype} values, not numbers")):
        load_checkpoint(path)


@pytest.mark.parametrize("content, message", [(b"", "not an .npz archive"), (b"hello", "not an .npz archive"),
                                              (b"\x93NUMPY\x01\x00", "a single .npy array")])
def test_a_file_of_another_kind_says_what_it_is(tmp_path, content, message):
    (tmp_path / "x.npz").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "x.npz")


def test_an_entry_that_is_both_array_and_folder_is_refused(tmp_path):
    path = tmp_path / "clash.npz"
    np.savez(path, __meta__=np.frombuffer(b'{"format_version": 1}', np.uint8),
             **{"extra/a": np.zeros(1), "extra/a/b": np.zeros(1)})
    with pytest.raises(CheckpointError, match="'a/b' lies under 'a', which is an array|array and a folder"):
        load_checkpoint(path)


def test_an_archive_that_unpacks_past_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "big.npz", model=MLPDenoiser(MLPConfig.tiny()), compress=True)
    monkeypatch.setattr(ckpt_mod, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(CheckpointError, match="unpacks to .* bytes, over the limit of 1,000"):
        load_checkpoint(path)


# -- the zoo: a model is rebuilt only from a config, weights and settings that all check out ----------
def _trained_vae(tmp_path, **extra):
    from minidiff.models.vae import AutoencoderKL, VAEConfig
    config = VAEConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4, image_size=16)
    model = AutoencoderKL(config)
    return model, save_checkpoint(tmp_path / "vae.npz", model=model, config={"job": "vae", "model": dataclasses.asdict(config)},
                                  extra={"complete": np.asarray(1), **extra})


def test_a_weight_that_is_not_a_number_is_refused_on_load(tmp_path):
    model, path = _trained_vae(tmp_path, scale_factor=np.asarray(1.0))
    name = next(iter(model.state_dict()))
    state = model.state_dict()
    state[name] = state[name].copy()
    state[name].flat[0] = np.nan
    model.load_state_dict(state)
    save_checkpoint(path, model=model, config=load_checkpoint(path).config,
                    extra={"complete": np.asarray(1), "scale_factor": np.asarray(1.0)})
    with pytest.raises(CheckpointError, match=f"weight {name!r} holds NaN or infinite values"):
        zoo.load_trained(path)


@pytest.mark.parametrize("scale", [np.nan, np.inf, 0.0, -1.0, np.array([1.0, 2.0])])
def test_a_vae_scale_factor_must_be_one_finite_positive_number(tmp_path, scale):
    _, path = _trained_vae(tmp_path, scale_factor=np.asarray(scale))
    with pytest.raises(CheckpointError, match="scale factor must be one finite number > 0"):
        zoo.load_trained(path)


@pytest.mark.parametrize("settings, message", [
    ({"schedule": "nope"}, "diffusion.schedule must be one of"),
    ({"num_steps": 0}, "diffusion.num_steps must be an integer in [1, 100000], got 0"),
    ({"num_steps": 10 ** 10}, "diffusion.num_steps must be an integer in [1, 100000]"),
    ({"num_steps": "1000"}, "diffusion.num_steps must be an integer"),
    ({"prediction_type": "x"}, "diffusion.prediction_type must be one of"),
    ([1], "diffusion settings must be a JSON object"),
])
def test_diffusion_settings_are_checked_before_a_schedule_is_built(settings, message):
    ckpt = ckpt_mod.Checkpoint(path="u.npz", model_state={}, optim_state=None, ema_state=None,
                               config={"diffusion": settings}, step=0, extra={})
    with pytest.raises(CheckpointError, match=re.escape(message)):
        zoo.diffusion_settings(ckpt)


@pytest.mark.parametrize("model_config", [5, [1], {"channel_mults": 2}, {"base_channels": "8"}, {"nope": 1}])
def test_a_model_config_that_builds_no_model_is_a_checkpoint_error(tmp_path, model_config):
    _, path = _trained_vae(tmp_path, scale_factor=np.asarray(1.0))
    header = json.loads(np.load(path)["__meta__"].tobytes())
    header["config"]["model"] = model_config
    with pytest.raises(CheckpointError, match="VAEConfig"):
        zoo.load_trained(_with_header(path, header))
