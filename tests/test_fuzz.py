"""Fuzzing what a user can hand minidiff: damaged checkpoints of every kind, damaged tokenizer.json
files, random command lines, random image files (sizes, modes, formats, truncations).

Every example must end one of two ways: a valid result (exit code 0, the files it promises, images
of the right size), or one line on stderr with the exit code of bad input (2) and no new file. The
CLI runs in-process (``cli.main``), and each test draws few examples so the suite stays fast; set
MINIDIFF_FUZZ_EXAMPLES (e.g. 500) for a longer, randomised hunt.
"""
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minidiff import cli, zoo
from minidiff.checkpoint import CheckpointError, save_checkpoint
from minidiff.models.classifier import AttributeClassifier, ClassifierConfig
from minidiff.models.clip import CLIPConfig, MiniCLIP
from minidiff.models.digit_classifier import DigitClassifier, DigitClassifierConfig
from minidiff.models.unet import UNet, UNetConfig
from test_cli import checkpoints, files_under, images, shown  # noqa: F401  (fixtures and helpers)

EXAMPLES = int(os.environ.get("MINIDIFF_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 15, deadline=None, derandomize=EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def assert_bad_input(exc):
    """The exception ends the command as bad input: exit code 2, one line."""
    code, line = cli.failure(exc)
    assert code == cli.EXIT_BAD_INPUT and "\n" not in line, (code, line, repr(exc))


# -- damaged checkpoints of every kind -----------------------------------------------------------------
@pytest.fixture(scope="module")
def every_kind(checkpoints, tmp_path_factory):
    """{job: the bytes of a tiny checkpoint of that job}: the pipeline's three and the others."""
    folder = tmp_path_factory.mktemp("kinds")
    blobs = {"text_encoder": (checkpoints / "text_encoder.npz").read_bytes(),
             "vae": (checkpoints / "vae.npz").read_bytes(), "text2image": (checkpoints / "unet.npz").read_bytes()}
    pixel = dataclasses.replace(UNetConfig.tiny(), context_dim=None)
    others = {"pixel": UNet(pixel), "clip": MiniCLIP(CLIPConfig.tiny()),
              "classifier": AttributeClassifier(ClassifierConfig.tiny()),
              "digit_classifier": DigitClassifier(DigitClassifierConfig.tiny())}
    for job, model in others.items():
        diffusion = {"diffusion": {"schedule": "linear", "num_steps": 10, "prediction_type": "epsilon"}}
        path = save_checkpoint(folder / f"{job}.npz", model=model, config={
            "job": job, "model": dataclasses.asdict(model.config), **(diffusion if job == "pixel" else {})})
        blobs[job] = path.read_bytes()
    return blobs


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10 ** 20) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)


def paths_in(tree, prefix=()):
    """Every key path of a JSON tree: (), ("config",), ("config", "model"), ..."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths_in(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths_in(value, prefix + (i,))


def replaced(tree, path, value):
    """A copy of the JSON tree with the node at ``path`` set to ``value``."""
    if not path:
        return value
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[path[0]] = replaced(tree[path[0]], path[1:], value)
    return copy


@st.composite
def damaged_bytes(draw, data: bytes):
    """``data`` truncated, with a few bytes flipped, or with random bytes spliced in."""
    how = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            damaged[at] ^= draw(st.integers(1, 255))
        return bytes(damaged)
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


@st.composite
def damaged_header(draw, data: bytes):
    """The checkpoint with one node of its JSON header replaced by a random JSON value."""
    archive = dict(np.load(io.BytesIO(data)))
    header = json.loads(archive["__meta__"].tobytes())
    path = draw(st.sampled_from(sorted(paths_in(header), key=str)))
    header = replaced(header, path, draw(json_values))
    archive["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **archive)
    return buffer.getvalue()


@FUZZ
@given(data=st.data())
def test_a_damaged_checkpoint_of_any_kind_loads_or_is_one_line_of_bad_input(every_kind, data):
    job = data.draw(st.sampled_from(sorted(every_kind)), label="job")
    damage = data.draw(st.sampled_from([damaged_bytes, damaged_header]), label="damage")
    blob = data.draw(damage(every_kind[job]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        path.write_bytes(blob)
        try:
            model, _ = zoo.load_trained(path)
        except Exception as exc:
            assert_bad_input(exc)
        else:                                   # a valid result: a model with finite weights
            assert all(np.isfinite(p.data).all() for p in model.parameters())
        assert sorted(os.listdir(folder)) == ["model.npz"]


def with_model_field(blob: bytes, field, value) -> bytes:
    """The checkpoint ``blob`` with its model config's ``field`` set to ``value``."""
    archive = dict(np.load(io.BytesIO(blob)))
    header = json.loads(archive["__meta__"].tobytes())
    header["config"]["model"][field] = value
    archive["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **archive)
    return buffer.getvalue()


@pytest.mark.parametrize("text, message", [
    ([16, 2], "CLIPConfig: text must be a TextEncoderConfig or a dict of its settings, got "),   # (a tuple, from JSON)
    (5, "CLIPConfig: text must be a TextEncoderConfig or a dict of its settings, got int"),
    ("tiny", "CLIPConfig: text must be a TextEncoderConfig or a dict of its settings, got str"),
    (None, "CLIPConfig: text must be a TextEncoderConfig or a dict of its settings, got NoneType"),
    ({"width": 16, "depth": 2}, "CLIPConfig: text has unknown settings 'depth'"),
    ({"width": 0}, "CLIPConfig: text: TextEncoderConfig: width must be a positive integer, got 0"),
    ({"width": [16]}, "CLIPConfig: text: TextEncoderConfig: width must be a positive integer, got [16]"),
])
def test_a_clip_checkpoint_with_a_damaged_text_config_is_one_line_naming_the_field(every_kind, tmp_path, text,
                                                                                   message):
    path = tmp_path / "clip.npz"
    path.write_bytes(with_model_field(every_kind["clip"], "text", text))
    with pytest.raises(CheckpointError, match="the model config in .* is invalid") as caught:
        zoo.load_trained(path)
    assert message in str(caught.value)
    assert_bad_input(caught.value)
    with pytest.raises(ValueError, match="CLIPConfig: text"):     # and the config itself, as the API sees it
        CLIPConfig(**{**dataclasses.asdict(CLIPConfig.tiny()), "text": text})


@pytest.mark.parametrize("field, value", [("channels", 8), ("channels", [4, "8"]), ("norm_groups", 0),
                                          ("embed_dim", 2.5), ("logit_scale_max", "big"), ("image_size", True)])
def test_a_clip_checkpoint_with_a_damaged_size_is_one_line_naming_the_field(every_kind, tmp_path, field, value):
    path = tmp_path / "clip.npz"
    path.write_bytes(with_model_field(every_kind["clip"], field, value))
    with pytest.raises(CheckpointError, match=f"the model config in .* is invalid \\(CLIPConfig: {field}"):
        zoo.load_trained(path)


# -- damaged tokenizer.json ------------------------------------------------------------------------------
@st.composite
def damaged_tokenizer(draw, text: str):
    if draw(st.booleans()):
        return draw(damaged_bytes(text.encode("utf-8")))
    tree = json.loads(text)
    path = draw(st.sampled_from(sorted(paths_in(tree), key=str)))
    return json.dumps(replaced(tree, path, draw(json_values))).encode("utf-8")


@FUZZ
@given(data=st.data())
def test_a_damaged_tokenizer_loads_or_is_one_line_of_bad_input(checkpoints, data):
    text = (checkpoints / "tokenizer.json").read_text()
    vocab_size = json.loads(text)["vocab_size"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokenizer.json"
        path.write_bytes(data.draw(damaged_tokenizer(text)))
        try:
            tokenizer = zoo.load_tokenizer(path, vocab_size)
        except Exception as exc:
            assert_bad_input(exc)
        else:
            assert tokenizer.vocab_size == vocab_size
            ids, mask = tokenizer.encode("a red circle", max_length=24)
            assert tokenizer.decode(ids) == "a red circle" and mask.sum() >= 3


# -- random command lines --------------------------------------------------------------------------------
OPTION_VALUES = {
    "--steps": ["-1", "0", "1", "2", "1000000000", "x", "1.5"],
    "--guidance": ["nan", "inf", "-1", "0", "1e30", "4", "1e-300", "101"],
    "--n": ["-3", "0", "1", "2", "257", "many"],
    "--seed": ["-1", "0", "7", str(2 ** 64), "x"],
    "--strength": ["-0.1", "0", "0.5", "1", "nan", "2"],
    "--extend": ["-4", "0", "1", "4", "8", "1000", str(10 ** 12)],
    "--sampler": ["ddim", "euler", "dpmpp_2m", "plms", ""],
    "--negative": ["", "a blue square", "\udcff", "x" * 2000],
    "--device": ["cpu", "gpu", "tpu"],
    "--out": ["{tmp}/a.png", "{tmp}/a.jpg", "{tmp}", "{tmp}/missing/a.png", "", "{tmp}/a.png/b.png"],
    "--checkpoints": ["{checkpoints}", "{tmp}/none", "{images}"],
    "--force": None, "--bogus": None, "--help-me": None,
}
COMMANDS = ["generate", "img2img", "inpaint", "outpaint", "paint", "--n"]
INPUTS = ["{images}/rgb.png", "{images}/grey.png", "{images}/mask.png", "{images}/small_mask.png",
          "{images}/black_mask.png", "{images}/truncated.png", "{images}/bomb.png", "{tmp}/nope.png",
          "a red circle", "", "\udce9t\udce9", "a" * 1001]


def expected_outputs(argv, tmp):
    """The files a successful run promises: --out (the last one given), and FILE_i.png for --n > 1."""
    out = Path([argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"][-1])
    n = int([argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--n"][-1])
    return [out] if n == 1 else [out] + [out.with_name(f"{out.stem}_{i}.png") for i in range(1, n + 1)]


@FUZZ
@given(command=st.sampled_from(COMMANDS), inputs=st.lists(st.sampled_from(INPUTS), max_size=4),
       options=st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=5), data=st.data())
def test_a_random_command_line_succeeds_or_is_one_line_of_bad_input(checkpoints, images, monkeypatch, capsys,
                                                                   command, inputs, options, data):
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        monkeypatch.setattr(cli, "DEFAULT_OUTPUTS", tmp / "outputs")
        fill = dict(tmp=tmp, images=images, checkpoints=checkpoints)
        # defaults that keep a valid run fast and inside tmp; a drawn option given later wins
        argv = [command] + [i.format(**fill) for i in inputs] + ["--steps", "1", "--n", "1", "--out", f"{tmp}/a.png",
                                                                 "--checkpoints", str(checkpoints)]
        for flag in options:
            values = OPTION_VALUES[flag]
            argv += [flag] if values is None else [flag, data.draw(st.sampled_from(values)).format(**fill)]
        before = files_under(images)
        code = cli.main(argv)
        err = capsys.readouterr().err
        if code == 0:
            for path in expected_outputs(argv, tmp):
                with Image.open(path) as image:
                    assert image.mode == "RGB"
        else:
            assert code == cli.EXIT_BAD_INPUT and len(shown(err)) == 1 and "Traceback" not in err, (argv, code, err)
            assert files_under(tmp) == [], argv
        assert files_under(images) == before


# -- random image files ----------------------------------------------------------------------------------
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tiff", "WEBP": ".webp",
           "PPM": ".ppm", "ICO": ".ico"}
MODES = ["RGB", "L", "RGBA", "P", "1", "I", "F", "CMYK", "LA", "I;16"]


@st.composite
def image_files(draw):
    """(bytes of an image file, its suffix, its size, its mode): any size, mode and format, maybe damaged."""
    width, height = draw(st.sampled_from([4, 8, 12, 16, 1, 3, 33, 260])), draw(st.sampled_from([4, 8, 16, 1, 7]))
    mode, kind = draw(st.sampled_from(MODES)), draw(st.sampled_from(sorted(FORMATS)))
    pixels = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    try:
        Image.fromarray(pixels).convert(mode).save(buffer, format=kind)
    except (OSError, ValueError, KeyError, TypeError):   # a mode this format cannot store: a plain RGB PNG
        mode, kind = "RGB", "PNG"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=kind)
    blob = buffer.getvalue()
    if draw(st.booleans()):
        blob = draw(damaged_bytes(blob))
    return blob, FORMATS[kind], (width, height)


@FUZZ
@given(image=image_files(), as_mask=st.booleans())
def test_a_random_image_file_is_used_or_is_one_line_of_bad_input(checkpoints, images, capsys, image, as_mask):
    blob, suffix, size = image
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / f"input{suffix}").write_bytes(blob)
        given_file, out = tmp / f"input{suffix}", tmp / "out.png"
        if as_mask:                              # repaint the image with this file as the mask
            argv = ["inpaint", images / "rgb.png", given_file, "x", "--steps", "1"]
        else:                                    # strength 0: the VAE's reconstruction, no sampling
            argv = ["img2img", given_file, "x", "--strength", "0"]
        code = cli.main([str(a) for a in argv] + ["--out", str(out), "--checkpoints", str(checkpoints),
                                                  "--device", "cpu"])
        err = capsys.readouterr().err
        if code == 0:
            with Image.open(out) as result:
                assert result.mode == "RGB" and result.size == ((16, 16) if as_mask else size)
        else:
            assert code == cli.EXIT_BAD_INPUT and len(shown(err)) == 1 and "Traceback" not in err, (argv, err)
            assert sorted(p.name for p in tmp.iterdir()) == [f"input{suffix}"]
