"""``train all`` (train/recipe.py): the stages and what each waits for, a whole 64x64 pipeline from
nothing into one folder, stages side by side in processes of their own giving the very same models,
resuming, a failing stage in one line; and the vae64 job that it relies on resuming like any other."""
import contextlib
import dataclasses
import io
import json
import time

import numpy as np
import pytest

from minidiff import cli, train, zoo
from minidiff.checkpoint import load_checkpoint
from minidiff.models.vae import VAEConfig
from minidiff.pipeline import Pipeline
from minidiff.train import recipe

# every stage a few steps on a few images: seconds on a CPU
TINY = {"steps": 2, "dataset_size": 32, "batch_size": 4}


def test_the_shapes_recipe_is_the_shipped_64x64_pipeline():
    stages = {s.name: s for s in recipe.recipe_for("shapes")}
    assert list(stages) == ["clip", "vae32", "text2image", "vae64", "judge64"]
    # the U-Net learns on the 32x32 VAE's latents; the 64x64 VAE is distilled from that same VAE
    assert stages["text2image"].after == ("clip", "vae32")
    assert stages["text2image"].inputs["vae"] == zoo.VAE32_FILE
    assert stages["vae64"].after == ("vae32",) and stages["vae64"].inputs == {"teacher": zoo.VAE32_FILE}
    written = [name for s in stages.values() for _, name in s.files]
    assert sorted(written) == sorted(["tokenizer.json", "clip.npz", "text_encoder.npz", "vae32.npz", "unet.npz",
                                      "vae.npz", zoo.JUDGE64_FILE])
    # every stage comes after the stages it waits for, so the tuple runs one after another
    seen = set()
    for stage in stages.values():
        assert set(stage.after) <= seen, stage.name
        seen.add(stage.name)


def test_stage_configs_wire_each_stage_to_the_files_before_it(tmp_path):
    configs = train.stage_configs(tmp_path, "full")
    assert configs["text2image"].vae == str(tmp_path / "vae32.npz")
    assert configs["text2image"].text_encoder == str(tmp_path / "text_encoder.npz")
    assert configs["vae64"].teacher == str(tmp_path / "vae32.npz")
    assert configs["judge64"].model.image_size == 64 and configs["vae64"].model.image_size == 64
    assert configs["vae32"].model.image_size == 32 and configs["vae32"].extra_fraction == 0.3
    assert configs["clip"].model.pool_grid == 2                 # the image tower that sees where things are
    # the command line's settings reach every stage that has them, and win over a stage's own
    configs = train.stage_configs(tmp_path, "quick", {"steps": 7, "extra_fraction": 0.5})
    assert {cfg.steps for cfg in configs.values()} == {7} and configs["vae32"].extra_fraction == 0.5


@pytest.mark.parametrize("overrides, message", [
    ({"teacher": "mine.npz"}, "--teacher 'mine.npz': `train all` chooses it for each stage itself"),
    ({"model": "f8_64"}, "--model 'f8_64': `train all` chooses it for each stage itself"),
    ({"rank": 4}, "--rank 4: no stage of `train all` uses it"),
    ({"data": "digits", "extra_fraction": 0.2}, "only --data shapes has pink objects"),
])
def test_a_setting_train_all_cannot_take_is_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.run_all(tmp_path / "out", overrides=overrides, progress=False)
    assert not (tmp_path / "out").exists()


def test_train_all_builds_a_64x64_pipeline_that_generates_and_resumes(tmp_path):
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.run_all(out, overrides=TINY, progress=False)
    for name in ("tokenizer.json", "clip.npz", "text_encoder.npz", "vae32.npz", "unet.npz", "vae.npz",
                 zoo.JUDGE64_FILE):
        assert (out / name).is_file(), name
    vae, vae32 = zoo.load_vae(out / "vae.npz"), zoo.load_vae(out / "vae32.npz")
    assert (vae.config.image_size, vae32.config.image_size) == (64, 32)
    assert vae.config.latent_shape == vae32.config.latent_shape and vae.scale_factor == vae32.scale_factor
    assert load_checkpoint(out / "vae.npz").config["train"]["job"] == "vae64"
    images = Pipeline.load(out, device="cpu").sample_prompts(["a red circle"], 4.0, steps=2, seed=0)
    assert images.shape == (1, 3, 64, 64)
    from PIL import Image
    with Image.open(out / recipe.SAMPLES_FILE) as shown:         # what the folder makes, under each prompt
        assert shown.size[0] > 4 * shown.size[1]
    runs = json.loads((out / recipe.TIMES_FILE).read_text())["runs"]
    assert [row["stage"] for row in runs[0]["stages"]] == list(train.stages_for("shapes"))
    assert all(row["complete"] and row["wall_s"] >= row["training_s"] >= 0 for row in runs[0]["stages"])
    # the same command again finds every stage finished and trains nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train.run_all(out, overrides=TINY, progress=False)
    assert "0 of 5 stages to train" in printed.getvalue()
    assert f'try: python -m minidiff generate "a small red circle above a blue square" --checkpoints {out}' \
        in printed.getvalue()
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}


def test_stages_side_by_side_give_the_same_models_as_one_after_another(tmp_path):
    """Each stage is a function of its seed and inputs alone, so where it ran changes nothing."""
    overrides = {**TINY, "data": "digits"}
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.run_all(tmp_path / "one", overrides=overrides, progress=False, parallel=1)
        assert train.run_all(tmp_path / "side", overrides=overrides, progress=False, parallel=3)
    for name in ("clip.npz", "vae.npz", "unet.npz", "digit_classifier.npz"):
        a, b = load_checkpoint(tmp_path / "one" / name), load_checkpoint(tmp_path / "side" / name)
        assert set(a.model_state) == set(b.model_state), name
        for key in a.model_state:
            np.testing.assert_allclose(a.model_state[key], b.model_state[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: {key}")
    runs = json.loads((tmp_path / "side" / recipe.TIMES_FILE).read_text())["runs"]
    assert runs[0]["parallel"] == 3
    rows = {row["stage"]: row for row in runs[0]["stages"]}
    assert rows["text2image"]["started_s"] >= max(rows["clip"]["ended_s"], rows["vae"]["ended_s"]) - 0.5


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_stage_that_fails_is_one_line_naming_it_and_a_nonzero_exit(tmp_path, capsys, parallel):
    code = cli.main(["train", "all", "--data", f"folder:{tmp_path / 'nowhere'}", "--out", tmp_path / "out",
                     "--steps", "2", "--parallel", parallel, "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("minidiff: error: train all: stage ") and "nowhere" in err[0], err


def test_plan_prints_the_stages_and_trains_nothing(tmp_path, capsys):
    code = cli.main(["train", "all", "--plan", "--preset", "full", "--out", tmp_path / "out", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "out").exists()
    assert "5 of 5 stages to train" in printed
    assert "8000 x 256  after clip, vae32" in printed and "-> classifier64.npz" in printed


@pytest.mark.parametrize("argv, message", [
    (["pixel", "--plan"], "--plan: only `train all` has a plan of stages"),
    (["pixel", "--parallel", "2"], "--parallel 2: only `train all` has stages to run side by side"),
    (["all", "--parallel", "0"], "--parallel must be an integer >= 1, got 0"),
])
def test_parallel_is_checked_before_any_folder_is_made(tmp_path, capsys, argv, message):
    code = cli.main(["train", *argv, "--out", tmp_path / "out", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_stage_finished_in_its_work_folder_is_copied_up_without_training(tmp_path, monkeypatch):
    """A run stopped between a stage's last step and copying its files up loses nothing."""
    out = tmp_path / "run"
    stage = next(s for s in recipe.recipe_for("shapes") if s.name == "judge64")
    cfg = train.stage_configs(out, "quick", {**TINY, "steps": 1})["judge64"]
    with contextlib.redirect_stdout(io.StringIO()):
        train.run_classifier(cfg, out=recipe.work_folder(out, stage), progress=False)
    assert not recipe.is_finished(out, stage)
    monkeypatch.setitem(recipe.RUNNERS, "classifier", lambda *a, **k: pytest.fail("trained again"))
    assert recipe.run_stage(out, stage, cfg)["complete"]
    assert recipe.is_finished(out, stage) and zoo.load_classifier(out / zoo.JUDGE64_FILE).config.image_size == 64


# -- the vae64 job: checkpoints and --resume like every base job ------------------------------------
def _tiny_vae64(tmp_path, steps):
    teacher_cfg = dataclasses.replace(train.VAEJob.quick(), steps=2, batch_size=2, dataset_size=8, scale_images=8,
                                      warmup_steps=0, model=VAEConfig(base_channels=8, channel_mults=(1, 2, 4),
                                                                      norm_groups=4, image_size=32))
    teacher = tmp_path / "teacher"
    if not (teacher / "vae.npz").exists():
        with contextlib.redirect_stdout(io.StringIO()):
            train.run_vae(teacher_cfg, out=teacher, progress=False)
    return dataclasses.replace(train.VAE64Job.quick(), steps=steps, batch_size=2, dataset_size=8, warmup_steps=0,
                               teacher=str(teacher / "vae.npz"), checkpoint_every=1,
                               model=VAEConfig(base_channels=8, channel_mults=(1, 1, 2, 4), norm_groups=4,
                                               image_size=64))


def test_vae64_stopped_and_resumed_is_the_run_that_never_stopped(tmp_path):
    cfg = _tiny_vae64(tmp_path, steps=3)
    with contextlib.redirect_stdout(io.StringIO()):
        whole = train.run_vae64(cfg, out=tmp_path / "whole", progress=False)
        part = train.run_vae64(cfg, out=tmp_path / "pieces", stop_at=1, progress=False)
        assert not part.complete and not zoo.is_complete(tmp_path / "pieces" / "vae.npz")
        with pytest.raises(ValueError, match="already exists: pass --resume"):
            train.run_vae64(cfg, out=tmp_path / "pieces", progress=False)
        rest = train.run_vae64(cfg, out=tmp_path / "pieces", resume=True, progress=False)
    assert whole.complete and rest.complete and rest.steps_run == 2
    a, b = load_checkpoint(tmp_path / "whole" / "vae.npz"), load_checkpoint(tmp_path / "pieces" / "vae.npz")
    for key in a.model_state:
        np.testing.assert_allclose(a.model_state[key], b.model_state[key], rtol=1e-5, atol=1e-7, err_msg=key)
    vae = zoo.load_vae(tmp_path / "pieces" / "vae.npz")       # a finished VAE with the teacher's scale factor
    assert vae.scale_factor == zoo.load_vae(cfg.teacher).scale_factor
    assert set(rest.evaluation) == {"latent_error", "psnr_64", "psnr_teacher_32"}


@pytest.mark.parametrize("parallel", [1, 2])
def test_no_stage_starts_once_the_time_is_up(tmp_path, parallel, monkeypatch):
    """--max-minutes: a stage that has not started by the deadline waits for the next run."""
    monkeypatch.setitem(recipe.RUNNERS, "clip", lambda *a, **k: pytest.fail("started after the deadline"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert not train.run_all(tmp_path / "run", overrides=TINY, progress=False, parallel=parallel,
                                 deadline=time.perf_counter() - 1)
    assert "--max-minutes is up; run the same command again" in printed.getvalue()
    assert not list((tmp_path / "run").glob("*.npz"))


def test_a_folder_of_another_recipe_is_refused_not_mixed_in(tmp_path):
    """An older `train all` folder holds a U-Net trained on vae.npz's latents; this recipe's vae.npz is
    another model (the 64x64 one): keeping that U-Net would decode its latents with the wrong VAE."""
    from minidiff.checkpoint import save_checkpoint
    from minidiff.models.unet import UNet
    out = tmp_path / "old"
    out.mkdir()
    cfg = train.make_config("text2image", "quick", {"steps": 1})
    unet = UNet(dataclasses.replace(cfg.model, in_channels=4, out_channels=4, image_size=8, context_dim=128))
    config = zoo.checkpoint_config("text2image", unet, {**dataclasses.asdict(cfg), "vae": str(out / "vae.npz")},
                                   cfg.diffusion())
    save_checkpoint(out / "unet.npz", model=unet, config=config, step=1, extra={"complete": np.asarray(1)})
    with pytest.raises(ValueError, match="trained with vae vae.npz, where this recipe gives it vae32.npz"):
        train.run_all(out, overrides=TINY, progress=False)
