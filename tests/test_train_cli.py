"""``python -m minidiff train``: a bad option makes no --out folder, one run per --out (the second
refuses before any work), and what the loop writes beside the checkpoint is written atomically."""
import dataclasses
import errno
import fcntl
import os
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidiff import cli, files, train, zoo
from minidiff.checkpoint import load_checkpoint
from minidiff.nn.layers import Linear
from minidiff.train import cli as train_cli
from minidiff.train import loop, recipe


def run_train(capsys, *argv):
    code = cli.main(["train", *[str(a) for a in argv], "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.fixture
def runner_calls(monkeypatch):
    """Every job's runner replaced by one that records its call, leaves empty files and says it is done."""
    calls = []

    def runner(job):
        def run(cfg, out=None, **kwargs):
            calls.append(job)
            if out is not None:                  # the files a finished job leaves (train all copies them up)
                Path(out).mkdir(parents=True, exist_ok=True)
                for name in recipe.CLIP_FILES if job == "clip" else (zoo.FILES[job],):
                    (Path(out) / name).write_bytes(b"")
            return types.SimpleNamespace(complete=True, step=cfg.steps)
        return run
    for job in train_cli.RUNNERS:
        monkeypatch.setitem(train_cli.RUNNERS, job, runner(job))
    return calls


@pytest.mark.parametrize("argv, message", [
    (["pixel", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["pixel", "--lr", "-1"], "lr must be a number > 0"),
    (["vae", "--model", "f3_7"], "--model 'f3_7' is not a named VAEConfig"),
    (["classifier", "--data", "folder:x"], "the classifier job has no 'data' setting"),
    (["all", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["all", "--rank", "4"], "--rank 4: no stage of `train all` uses it"),
])
def test_a_bad_option_is_one_line_and_leaves_no_new_out_folder(argv, message, tmp_path, capsys, runner_calls):
    out = tmp_path / "new" / "run"
    code, _, err = run_train(capsys, *argv, "--out", out)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "new").exists() and runner_calls == []


def test_a_run_that_fails_before_writing_removes_only_the_folder_it_made(tmp_path, capsys, monkeypatch):
    def bad_data(cfg, **kwargs):
        raise ValueError("--data folder:nowhere: no such folder")
    monkeypatch.setitem(train_cli.RUNNERS, "pixel", bad_data)
    code, _, err = run_train(capsys, "pixel", "--out", tmp_path / "made")
    assert code == 2 and err == ["minidiff: error: --data folder:nowhere: no such folder"]
    assert not (tmp_path / "made").exists()
    (tmp_path / "mine").mkdir()                  # a folder the user made stays
    code, _, _ = run_train(capsys, "pixel", "--out", tmp_path / "mine")
    assert code == 2 and (tmp_path / "mine").is_dir()


@pytest.mark.parametrize("job", ["pixel", "lora", "all"])
def test_a_second_run_on_one_out_refuses_at_once_before_any_work(job, tmp_path, capsys, runner_calls):
    fd = os.open(tmp_path / loop.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)               # as the first run holds it
    os.write(fd, b"4242\n")
    try:
        code, out, err = run_train(capsys, job, "--out", tmp_path)
    finally:
        os.close(fd)
    assert code == 2 and len(err) == 1, err
    assert "is in use by another training run (process 4242)" in err[0]
    assert runner_calls == [] and "train " not in out          # no data loaded, no model built
    code, _, _ = run_train(capsys, job, "--out", tmp_path)      # once the first run is gone, it runs
    assert code == 0 and runner_calls == ([job] if job != "all" else [s.job for s in recipe.recipe_for("shapes")])


def test_fit_inside_the_commands_lock_does_not_lock_itself_out(tmp_path, capsys, monkeypatch):
    model = Linear(3, 1, rng=np.random.default_rng(0))
    model.config = dataclasses.make_dataclass("Config", [("width", int, 3)])()
    x = np.ones((4, 3), np.float32)

    def loss_fn(rng, step):
        y = model.forward(x)
        model.backward(2 * y / y.size)
        return np.asarray((y ** 2).mean(), np.float32)

    def tiny_job(cfg, out, **kwargs):
        cfg = train.TrainConfig(steps=3, log_every=1, checkpoint_every=2, warmup_steps=0)
        config = {"job": "pixel", "model": {"width": 3}, "train": dataclasses.asdict(cfg)}
        return train.fit("pixel", model, loss_fn, cfg, config, out=out, progress=False)
    monkeypatch.setitem(train_cli.RUNNERS, "pixel", tiny_job)
    code, _, err = run_train(capsys, "pixel", "--out", tmp_path / "run")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run" / "pixel.npz").step == 3


def test_the_lock_and_the_interruption_are_exported():
    from minidiff.train import TrainingInterrupted, output_lock
    assert output_lock is loop.output_lock and TrainingInterrupted is loop.TrainingInterrupted
    assert issubclass(TrainingInterrupted, KeyboardInterrupt)


def test_the_loss_curve_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "pixel_loss.png"
    history = [(10, 1.0), (20, 0.5), (30, 0.25)]
    path.write_bytes(b"the previous curve")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        loop._save_loss_curve(history, path, "pixel: training loss")
    assert path.read_bytes() == b"the previous curve" and os.listdir(tmp_path) == [path.name]
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    loop._save_loss_curve(history, path, "pixel: training loss")
    assert Image.open(path).format == "PNG" and os.listdir(tmp_path) == [path.name]
