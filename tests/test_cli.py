"""The command line: bad input gives one line on stderr, exit code 2 and no file; good input writes PNGs."""
import dataclasses
import errno
import fcntl
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidiff import backend, cli, files, pipeline, train
from minidiff.checkpoint import save_checkpoint
from minidiff.models.text_encoder import TextEncoder, TextEncoderConfig
from minidiff.models.tokenizer import BPETokenizer
from minidiff.models.unet import UNet, UNetConfig
from minidiff.models.vae import AutoencoderKL, VAEConfig

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ["a red circle on the left", "a small blue square at the top", "a green triangle",
          "a yellow circle above a purple square"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder laid out like data/pretrained/, holding tiny untrained models (16x16 images)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    tokenizer = BPETokenizer.train(CORPUS, vocab_size=280)
    tokenizer.save(folder / "tokenizer.json")
    text = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=24, width=16, num_layers=1, num_heads=2,
                             mlp_ratio=2)
    save_checkpoint(folder / "text_encoder.npz", model=TextEncoder(text), config={"job": "text_encoder",
                                                                                 "model": dataclasses.asdict(text)})
    vae = VAEConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4, image_size=16)
    save_checkpoint(folder / "vae.npz", model=AutoencoderKL(vae), config={"job": "vae", "model": dataclasses.asdict(vae)},
                    extra={"scale_factor": np.asarray(1.0), "complete": np.asarray(1)})
    unet = UNetConfig(in_channels=4, out_channels=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_levels=(1,), num_heads=2, context_dim=16, norm_groups=2, time_embed_dim=16, image_size=8)
    save_checkpoint(folder / "unet.npz", model=UNet(unet), config={
        "job": "text2image", "model": dataclasses.asdict(unet),
        "diffusion": {"schedule": "scaled_linear", "num_steps": 100, "prediction_type": "epsilon"}})
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / "grey.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask[:8, :8]).save(folder / "small_mask.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "black_mask.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "big.png")
    data = (folder / "big.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "bomb.png").write_bytes(png_header(30000, 30000))
    (folder / "oversized.png").write_bytes(png_header(300, 300))
    return folder


def png_header(width, height):
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


def rewrite_header(path, change):
    """Rewrite a checkpoint's JSON header with ``change(header) -> header``, keeping its arrays."""
    arrays = dict(np.load(path))
    header = change(json.loads(arrays["__meta__"].tobytes()))
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def hostile(checkpoints, tmp_path_factory):
    """Copies of the checkpoint folder, each with one file damaged as a hostile user would."""
    root = tmp_path_factory.mktemp("hostile")

    def variant(name, file, damage):
        folder = root / name
        shutil.copytree(checkpoints, folder)
        damage(folder / file)

    def nan_weight(path):
        arrays = dict(np.load(path))
        key = next(k for k in arrays if k.startswith("model/") and arrays[k].dtype.kind == "f")
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan
        np.savez(path, **arrays)

    def scale_factor(value):
        def damage(path):
            arrays = dict(np.load(path))
            arrays["extra/scale_factor"] = np.asarray(value)
            np.savez(path, **arrays)
        return damage

    def tokenizer(change):
        def damage(path):
            path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return damage

    variant("pickled", "unet.npz", lambda p: p.write_bytes(pickle.dumps({"w": [1.0]})))
    variant("nan_weight", "unet.npz", nan_weight)
    variant("nan_scale", "vae.npz", scale_factor(np.nan))
    variant("vector_scale", "vae.npz", scale_factor([1.0, 2.0]))
    variant("header_list", "unet.npz", lambda p: rewrite_header(p, lambda h: [h]))
    variant("config_list", "vae.npz", lambda p: rewrite_header(p, lambda h: {**h, "config": [1]}))
    variant("channel_mults", "unet.npz", lambda p: rewrite_header(
        p, lambda h: {**h, "config": {**h["config"], "model": {**h["config"]["model"], "channel_mults": 2}}}))
    variant("merges", "tokenizer.json", tokenizer(lambda t: {**t, "merges": 5}))
    variant("specials", "tokenizer.json", tokenizer(lambda t: {**t, "special_tokens": 5}))
    variant("doubling", "tokenizer.json", tokenizer(lambda t: {**t, "merges": [[259 + i - 1 if i else 3] * 2
                                                                             for i in range(40)]}))
    return root


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


BAD_INPUTS = {  # name: (argv after the command's own inputs, a fragment of the one-line message)
    "zero steps": (["generate", "a red circle", "--steps", "0"], "--steps must be >= 1"),
    "negative guidance": (["generate", "a red circle", "--guidance", "-1"], "--guidance must be a number in [0, 100]"),
    "nan guidance": (["generate", "a red circle", "--guidance", "nan"], "--guidance must be a number in [0, 100]"),
    "unknown sampler": (["generate", "a red circle", "--sampler", "plms"], "--sampler must be one of"),
    "no images": (["generate", "a red circle", "--n", "0"], "--n must be between 1 and 256"),
    "strength above one": (["img2img", "{images}/rgb.png", "x", "--strength", "1.5"], "--strength must be in [0, 1]"),
    "negative strength": (["img2img", "{images}/rgb.png", "x", "--strength", "-0.1"], "--strength must be in [0, 1]"),
    "missing image": (["img2img", "{images}/nope.png", "x"], "nope.png not found"),
    "grey image": (["img2img", "{images}/grey.png", "x"], "image must be RGB, got mode 'L'"),
    "mask size": (["inpaint", "{images}/rgb.png", "{images}/small_mask.png", "x"], "mask size 8x8 does not match"),
    "missing mask": (["inpaint", "{images}/rgb.png", "{images}/nope.png", "x"], "mask file"),
    "zero extend": (["outpaint", "{images}/rgb.png", "x", "--extend", "0"], "--extend must be >= 1"),
    "output under a file": (["generate", "x", "--out", "{images}/rgb.png/out.png"], "does not exist"),
    "output not png": (["generate", "x", "--out", "{tmp}/out.jpg"], "--out must end in .png"),
    "output is a folder": (["generate", "x", "--out", "{tmp}/folder.png"], "is a folder"),
    "empty output": (["generate", "x", "--out", ""], "--out must name a .png file"),
    "missing checkpoint folder": (["generate", "x", "--checkpoints", "{tmp}/none"], "no such folder"),
    "empty checkpoint folder": (["generate", "x", "--checkpoints", "{tmp}/empty"], "checkpoint"),
    "corrupt checkpoint": (["generate", "x", "--checkpoints", "{tmp}/corrupt"], "corrupt"),
    "existing output": (["generate", "x", "--out", "{tmp}/existing.png"], "exists; pass --force"),
    "missing prompt": (["generate"], "the following arguments are required: prompt"),
    "steps not a number": (["generate", "x", "--steps", "many"], "invalid int value: 'many'"),
    "unknown command": (["paint", "x"], "invalid choice: 'paint'"),
    "missing checkpoint to evaluate": (["evaluate", "{tmp}/none.npz"], "none.npz not found"),
    "unknown training job": (["train", "gan"], "invalid choice: 'gan'"),
    "training output is a file": (["train", "pixel", "--out", "{images}/rgb.png"], "is a file, not a folder"),
    "zero minutes": (["train", "pixel", "--max-minutes", "0"], "--max-minutes must be > 0"),
    "negative seed": (["generate", "x", "--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
    "huge guidance": (["generate", "x", "--guidance", "1e30"], "--guidance must be a number in [0, 100], got 1e+30"),
    "huge extend": (["outpaint", "{images}/rgb.png", "x", "--extend", "1000"],
                    "--extend 1000 grows the 16x16 image to 2016x2016 = 4,064,256 pixels, over the limit of "
                    "65,536; use --extend 120 or less"),
    "too many images of a big input": (["img2img", "{images}/big.png", "x", "--n", "100"],
                                       "--n 100 images of 64x64 pixels are 409,600 pixels, over the limit of "
                                       "262,144 for one run; use --n 64 or fewer"),
    "too many images": (["generate", "x", "--n", "257"], "--n must be between 1 and 256, got 257"),
    "decompression bomb": (["img2img", "{images}/bomb.png", "x"], "claims more pixels than even PIL will decode"),
    "decompression bomb mask": (["inpaint", "{images}/rgb.png", "{images}/bomb.png", "x"],
                                "mask {images}/bomb.png claims more pixels"),
    "oversized image": (["img2img", "{images}/oversized.png", "x"], "300x300 = 90,000 pixels is over the limit"),
    "all-black mask": (["inpaint", "{images}/rgb.png", "{images}/black_mask.png", "x"], "nothing to repaint"),
    "truncated image": (["img2img", "{images}/truncated.png", "x"], "cannot read image"),
    "not an image": (["img2img", "{hostile}/merges/tokenizer.json", "x"], "cannot read image"),
    "non-UTF-8 prompt": (["generate", "a red \udcff circle"],
                         "the prompt is not valid UTF-8 text (byte 0xff at character 6)"),
    "non-UTF-8 negative prompt": (["generate", "x", "--negative", "\udce9t\udce9"], "--negative is not valid UTF-8"),
    "very long prompt": (["generate", "a" * 1001], "the prompt is 1,001 characters, over the limit of 1,000"),
    "pickled checkpoint": (["generate", "x", "--checkpoints", "{hostile}/pickled"], "is a Python pickle"),
    "NaN weight": (["generate", "x", "--checkpoints", "{hostile}/nan_weight"], "holds NaN or infinite values"),
    "NaN scale factor": (["generate", "x", "--checkpoints", "{hostile}/nan_scale"],
                         "scale factor must be one finite number > 0"),
    "vector scale factor": (["generate", "x", "--checkpoints", "{hostile}/vector_scale"],
                            "scale factor must be one finite number > 0"),
    "header a list": (["generate", "x", "--checkpoints", "{hostile}/header_list"], "header must be a JSON object"),
    "config a list": (["generate", "x", "--checkpoints", "{hostile}/config_list"], "config must be a JSON object"),
    "channel_mults a number": (["generate", "x", "--checkpoints", "{hostile}/channel_mults"],
                               "channel_mults must be a sequence of positive integers, got 2"),
    "tokenizer merges a number": (["generate", "x", "--checkpoints", "{hostile}/merges"],
                                  "merges must be a list of [a, b] pairs"),
    "tokenizer special_tokens a number": (["generate", "x", "--checkpoints", "{hostile}/specials"],
                                          "special_tokens must be ['<pad>', '<start>', '<end>'], got 5"),
    "tokenizer merges that double": (["generate", "x", "--checkpoints", "{hostile}/doubling"],
                                     "bytes, over the limit of 1,024"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_code_two_and_no_file(name, checkpoints, images, hostile, tmp_path, capsys):
    argv, message = BAD_INPUTS[name]
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in checkpoints.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "unet.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    (tmp_path / "existing.png").write_bytes(b"keep me")
    before = files_under(tmp_path) + files_under(images)
    argv = [a.format(images=images, tmp=tmp_path, hostile=hostile) for a in argv]
    message = message.format(images=images)
    if argv[0] in ("generate", "img2img", "inpaint", "outpaint") and "--checkpoints" not in argv:
        argv += ["--checkpoints", str(checkpoints)]
    code, out, err = run_cli(capsys, *argv, "--device", "cpu")
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert files_under(tmp_path) + files_under(images) == before
    assert (tmp_path / "existing.png").read_bytes() == b"keep me"


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is present")
def test_asking_for_a_missing_gpu_is_bad_input(capsys):
    code, _, err = run_cli(capsys, "generate", "x", "--device", "gpu")
    assert code == 2 and "device 'gpu' was requested" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder_is_bad_input(checkpoints, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "generate", "x", "--out", locked / "x.png", "--checkpoints", checkpoints)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "not writable" in err and not list(locked.iterdir())


def test_generate_writes_each_image_and_a_grid_and_refuses_to_overwrite(checkpoints, tmp_path, capsys):
    out = tmp_path / "red.png"
    argv = ["generate", "a red circle on the left", "--n", "2", "--steps", "2", "--out", out,
            "--checkpoints", checkpoints, "--device", "cpu"]
    code, printed, _ = run_cli(capsys, *argv)
    assert code == 0, printed
    assert [p.name for p in files_under(tmp_path)] == ["red.png", "red_1.png", "red_2.png"]
    assert Image.open(tmp_path / "red_1.png").size == (16, 16) and Image.open(out).size[0] > 32    # the grid
    stamp = out.stat().st_mtime_ns
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "exists; pass --force" in err and out.stat().st_mtime_ns == stamp
    code, _, _ = run_cli(capsys, *argv, "--force")
    assert code == 0


def test_an_empty_prompt_is_one_error_and_guidance_zero_samples_unconditionally(checkpoints, tmp_path, capsys):
    for prompt in ("", "   "):
        code, _, err = run_cli(capsys, "generate", prompt, "--steps", "1", "--out", tmp_path / "u.png",
                               "--checkpoints", checkpoints, "--device", "cpu")
        assert code == 2 and "the prompt is empty" in err and "--guidance 0" in err
        assert not (tmp_path / "u.png").exists()
    code, _, _ = run_cli(capsys, "generate", "anything", "--guidance", "0", "--steps", "1", "--out",
                         tmp_path / "u.png", "--checkpoints", checkpoints, "--device", "cpu")
    assert code == 0 and (tmp_path / "u.png").exists()


def test_img2img_writes_an_image_of_the_input_size(checkpoints, images, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "img2img", images / "rgb.png", "a green triangle", "--strength", "0.5",
                         "--steps", "2", "--out", tmp_path / "edit.png", "--checkpoints", checkpoints, "--device", "cpu")
    assert code == 0 and Image.open(tmp_path / "edit.png").size == (16, 16)


def test_evaluate_prints_frechet_distance_and_prompt_accuracy_per_guidance(checkpoints, tmp_path, capsys):
    from minidiff import evaluate
    config = evaluate.ClassifierConfig.tiny()
    save_checkpoint(tmp_path / "classifier.npz", model=evaluate.AttributeClassifier(config),
                    config={"job": "classifier", "model": dataclasses.asdict(config)})
    code, printed, err = run_cli(capsys, "evaluate", checkpoints / "unet.npz", "--n", "4", "--steps", "1",
                                 "--guidance", "1", "3", "--classifier", tmp_path / "classifier.npz", "--device", "cpu")
    assert code == 0, err
    assert "noise floor" in printed and "judge's ceiling" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "3"] and all(float(row[1]) >= 0 for row in rows)


def test_command_line_process_reports_bad_input_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "minidiff", "generate", "x", "--steps", "0",
                             "--out", str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "minidiff: error: --steps must be >= 1, got 0"
    assert not list(tmp_path.iterdir())


# -- runtime failures: exit code 1 (or 130), one line, and no file written ----------------------------
def shown(err):
    """The lines a terminal shows of ``err``: a progress bar redrawn with "\\r" is overwritten."""
    return [line.split("\r")[-1] for line in err.strip().split("\n") if line.split("\r")[-1].strip()]


def generate_argv(checkpoints, out, *extra):
    return ["generate", "a red circle", "--steps", "1", "--out", out, "--checkpoints", checkpoints,
            "--device", "cpu", *extra]


def test_a_result_that_is_not_a_number_is_refused_not_written_black(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline.Pipeline, "decode", lambda self, latents: self.xp.full(
        (latents.shape[0], 3, 16, 16), np.nan, np.float32))
    code, _, err = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png", "--n", "2"))
    assert code == 1 and len(shown(err)) == 1 and "NaN or infinite values" in err, err
    assert files_under(tmp_path) == []


def test_a_full_disk_is_exit_one_and_leaves_none_of_the_images(checkpoints, tmp_path, capsys, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:                      # the second of three files (g_1, g_2, the grid)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    code, _, err = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png", "--n", "2"))
    assert code == 1 and shown(err) == ["minidiff: error: [Errno 28] No space left on device"], err
    assert files_under(tmp_path) == []


def test_an_output_that_appears_while_sampling_is_not_replaced(checkpoints, tmp_path, capsys, monkeypatch):
    out, real = tmp_path / "g.png", pipeline.text_to_image

    def racing(*args, **kwargs):                 # another run writes the grid's name meanwhile
        out.write_bytes(b"the other run's")
        return real(*args, **kwargs)
    monkeypatch.setattr(pipeline, "text_to_image", racing)
    code, _, err = run_cli(capsys, *generate_argv(checkpoints, out, "--n", "2"))
    assert code == 2 and "g.png exists; pass --force" in err and len(shown(err)) == 1
    assert files_under(tmp_path) == [out] and out.read_bytes() == b"the other run's"


def test_a_forced_batch_that_fails_half_way_keeps_the_files_it_was_replacing(checkpoints, tmp_path, capsys,
                                                                           monkeypatch):
    old = {tmp_path / name: f"old {name}".encode() for name in ("g.png", "g_1.png", "g_2.png")}
    for path, data in old.items():
        path.write_bytes(data)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:                      # g_1 is new by now; the rename of g_2 fails
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)
    monkeypatch.setattr(files.os, "replace", replace)
    code, _, err = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png", "--n", "2", "--force"))
    assert code == 1 and shown(err) == ["minidiff: error: [Errno 5] Input/output error"], err
    assert files_under(tmp_path) == sorted(old) and all(p.read_bytes() == data for p, data in old.items())


def test_the_pipeline_refuses_an_absurd_guidance_scale_or_prompt_itself(checkpoints):
    pipe = pipeline.Pipeline.load(checkpoints, device="cpu")
    for scale in (1e30, float("inf"), float("nan"), -1.0, 100.5, True, "4"):
        with pytest.raises(ValueError, match=r"guidance_scale must be a number in \[0, 100\]"):
            pipe.text_to_image("a red circle", steps=1, guidance_scale=scale)
    for prompt, negative in (("a" * 1001, ""), ("a red circle", "b" * 1001)):
        with pytest.raises(ValueError, match="a text of 1,001 characters is over the limit of 1,000"):
            pipe.text_to_image(prompt, negative_prompt=negative, steps=1)
    assert len(pipe.text_to_image("a red circle", steps=1, guidance_scale=100)) == 1   # the cap itself is allowed


@pytest.mark.parametrize("argv, message", [
    (["a red circle", "--guidance", "1e30"], "guidance_scale must be a number in [0, 100], got 1e+30"),
    (["a" * 1001], "a text of 1,001 characters is over the limit of 1,000"),
])
def test_the_pipelines_own_caps_are_one_line_of_bad_input(argv, message, checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_check_sampling_arguments", lambda args: None)   # past the command line's checks
    code, _, err = run_cli(capsys, "generate", *argv, "--steps", "1", "--out", tmp_path / "g.png",
                           "--checkpoints", checkpoints, "--device", "cpu")
    assert code == 2 and len(shown(err)) == 1 and message in err, err
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("error, code, message", [
    (MemoryError(), 1, "minidiff: error: out of memory"),
    (KeyboardInterrupt(), 130, "minidiff: interrupted"),
    (TypeError("'NoneType' object is not subscriptable"), 1, "minidiff: internal error: TypeError"),
    (OSError(errno.EIO, "Input/output error"), 1, "minidiff: error: [Errno 5] Input/output error"),
    (RuntimeError("CUDA failed"), 1, "minidiff: error: CUDA failed"),
])
def test_each_kind_of_failure_has_its_exit_code_and_one_line(checkpoints, tmp_path, capsys, monkeypatch,
                                                             error, code, message):
    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(pipeline, "text_to_image", fail)
    got, _, err = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png"))
    assert got == code and shown(err)[0].startswith(message) and len(shown(err)) == 1, err
    assert files_under(tmp_path) == []


def test_debug_shows_the_traceback_and_the_same_line(checkpoints, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise TypeError("boom")
    monkeypatch.setattr(pipeline, "text_to_image", fail)
    code, _, err = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png", "--debug"))
    assert code == 1 and "Traceback" in err and shown(err)[-1].startswith("minidiff: internal error")


def test_a_cut_prompt_is_a_one_line_warning(checkpoints, tmp_path, capsys):
    code, _, err = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png")[:1],
                           "a red circle on the left " * 3, *generate_argv(checkpoints, tmp_path / "g.png")[2:])
    warned = [line for line in err.splitlines() if "warning" in line.lower()]
    assert code == 0 and len(warned) == 1 and warned[0].startswith("minidiff: warning: tokenizer: prompt of"), err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_stale_temporary_files_in_the_output_folder_are_removed(checkpoints, tmp_path, capsys):
    stale = tmp_path / ".g.png.k1ll3d_0.tmp"
    stale.write_bytes(b"half a PNG")
    os.utime(stale, (files.STARTED - 60, files.STARTED - 60))
    code, _, _ = run_cli(capsys, *generate_argv(checkpoints, tmp_path / "g.png"))
    assert code == 0 and files_under(tmp_path) == [tmp_path / "g.png"]


# -- training: one run per --out, SIGTERM as Ctrl-C ------------------------------------------------------
def test_a_second_training_run_on_one_out_refuses_with_one_line(tmp_path, capsys):
    fd = os.open(tmp_path / ".train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)               # as the first run holds it
    os.write(fd, b"4242\n")
    try:
        code, _, err = run_cli(capsys, "train", "pixel", "--out", tmp_path, "--steps", "2", "--batch-size", "2",
                               "--dataset-size", "4", "--model", "quick16", "--no-progress", "--device", "cpu")
    finally:
        os.close(fd)
    assert code == 2 and len(shown(err)) == 1, err
    assert "is in use by another training run (process 4242)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".train.lock"]


def test_sigterm_stops_training_like_ctrl_c_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from minidiff.checkpoint import load_checkpoint
    from minidiff.nn.layers import Linear
    model = Linear(3, 1, rng=np.random.default_rng(0))
    model.config = dataclasses.make_dataclass("Config", [("width", int, 3)])()
    x = np.ones((4, 3), np.float32)

    def loss_fn(rng, step):
        if step == 3:                            # a scheduler stops the job during step 3
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        y = model.forward(x)
        model.backward(2 * y / y.size)
        return np.asarray((y ** 2).mean(), np.float32)

    def fake_main(args):
        cfg = train.TrainConfig(steps=10, log_every=1, checkpoint_every=2, warmup_steps=0)
        config = {"job": "pixel", "model": {"width": 3}, "train": dataclasses.asdict(cfg)}
        train.fit("pixel", model, loss_fn, cfg, config, out=args.out, progress=False)
        return 0
    monkeypatch.setattr(train, "main", fake_main)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(capsys, "train", "pixel", "--out", tmp_path)
    assert code == 130 and len(shown(err)) == 1, err
    assert "interrupted: pixel: stopped by terminated (SIGTERM); the last checkpoint saved in" in err
    assert load_checkpoint(tmp_path / "pixel.npz").step == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert signal.getsignal(signal.SIGTERM) == before
