"""The command line: bad input gives one line on stderr, exit code 2 and no file; good input writes PNGs."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidiff import backend, cli
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
    return folder


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
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_code_two_and_no_file(name, checkpoints, images, tmp_path, capsys):
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
    argv = [a.format(images=images, tmp=tmp_path) for a in argv]
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


def test_empty_prompt_samples_unconditionally_with_a_note(checkpoints, tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "", "--steps", "1", "--out", tmp_path / "u.png",
                           "--checkpoints", checkpoints, "--device", "cpu")
    assert code == 0 and "prompt is empty" in err and (tmp_path / "u.png").exists()


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
