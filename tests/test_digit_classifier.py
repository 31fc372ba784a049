"""The digit classifier: its hand-written backward, its loss, its job (training split only) and its place in `train all`."""
import contextlib
import dataclasses
import io

import numpy as np
import pytest

from minidiff import evaluate, train, zoo
from minidiff.datasets import digits
from minidiff.models.digit_classifier import DigitClassifier, DigitClassifierConfig, digit_loss
from minidiff.nn.gradcheck import check_module
from minidiff.optim import AdamW
from minidiff.train import recipe
from minidiff.train.jobs import random_shift


@pytest.mark.parametrize("config", [
    DigitClassifierConfig.tiny(),
    DigitClassifierConfig(image_size=8, channels=(4, 8), convs_per_stage=2, stem_stride=2, num_groups=2,
                          pool_grid=1, feature_dim=6)], ids=["tiny", "stem_stride_2_two_convs"])
def test_digit_classifier_backward_matches_finite_differences(config):
    model = DigitClassifier(config, seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8))
    report = check_module(model, [x], max_coords=12)
    assert report.max_error < 1e-6, report


def test_features_and_logits_have_the_configured_sizes():
    model = DigitClassifier(DigitClassifierConfig(), seed=0).eval()
    x = np.zeros((3, 1, 32, 32), np.float32)
    assert model.features(x).shape == (3, 128) and model.forward(x).shape == (3, 10)


def test_wrong_image_shape_and_bad_configs_are_one_line_errors():
    model = DigitClassifier(DigitClassifierConfig.tiny())
    with pytest.raises(ValueError, match=r"expected images \(B, 1, 8, 8\), got shape \(2, 3, 8, 8\)"):
        model.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="image_size 30 must be a multiple of 16"):
        DigitClassifierConfig(image_size=30)
    with pytest.raises(ValueError, match="must each divide into num_groups=8"):
        DigitClassifierConfig(channels=(12, 24))


def test_loss_starts_at_chance_and_adamw_steps_lower_it():
    pixels, labels = digits.load("train", size=8, count=40)
    model = DigitClassifier(DigitClassifierConfig.tiny(), seed=0)
    optimizer = AdamW(model, lr=1e-2)
    losses = []
    for _ in range(30):
        model.zero_grad()
        losses.append(float(digit_loss(model, pixels, labels)))
        optimizer.step()
    assert losses[0] == pytest.approx(np.log(10), abs=0.3)
    assert losses[-1] < losses[0] - 1.0, losses


def test_random_shift_moves_each_image_by_its_own_offset_and_fills_background():
    images = np.full((6, 1, 9, 9), -1.0, np.float32)
    images[:, 0, 4, 4] = 1.0                                   # one ink pixel in the middle
    shifted = random_shift(images, np.random.default_rng(3), max_shift=2)
    assert shifted.shape == images.shape
    for image in shifted[:, 0]:
        (row,), (col,) = np.nonzero(image == 1.0)
        assert abs(row - 4) <= 2 and abs(col - 4) <= 2
        assert (image[image != 1.0] == -1.0).all()
    moved = {tuple(np.argwhere(image == 1.0)[0]) for image in shifted[:, 0]}
    assert len(moved) > 1                                      # not one shift for the whole batch
    np.testing.assert_array_equal(random_shift(images, np.random.default_rng(3), max_shift=0), images)


def tiny_job(**changes):
    settings = dict(model=DigitClassifierConfig.tiny(), steps=3, batch_size=4, dataset_size=32, warmup_steps=1,
                    log_every=1)
    settings.update(changes)
    return dataclasses.replace(train.make_config("digit_classifier", "quick"), **settings)


def test_the_job_trains_on_the_training_split_only_and_reports_heldout_accuracy(tmp_path, monkeypatch):
    from minidiff.train import jobs
    splits, at_fit = [], []
    real_load, real_fit = digits.load_uint8, jobs.fit

    def recording_load(split="train", *args, **kwargs):
        splits.append(split)
        return real_load(split, *args, **kwargs)

    def recording_fit(*args, **kwargs):
        at_fit.extend(splits)                                  # what was read before training began
        return real_fit(*args, **kwargs)
    monkeypatch.setattr(digits, "load_uint8", recording_load)
    monkeypatch.setattr(jobs, "fit", recording_fit)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train.RUNNERS["digit_classifier"](tiny_job(), out=tmp_path, progress=False)
    assert at_fit == ["train"] and "heldout" in splits[len(at_fit):]
    assert result.complete and result.evaluation["overall"][1] == evaluate.HELDOUT_DIGITS
    assert "digit_classifier: held-out accuracy" in printed.getvalue()
    # the checkpoint is registered, and loads back as the model that was trained
    assert zoo.FILES["digit_classifier"] == "digit_classifier.npz"
    loaded = zoo.load_digit_classifier(tmp_path / "digit_classifier.npz")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), result.model.eval().forward(x))


def test_the_job_takes_only_digits():
    with pytest.raises(ValueError, match="--data shapes: the digit classifier learns digit labels"):
        train.make_config("digit_classifier", "quick", {"data": "shapes"})
    assert train.make_config("digit_classifier", "full", {"data": "digits"}).data == "digits"


def test_a_missing_digit_classifier_names_the_train_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train digit_classifier"):
        zoo.load_digit_classifier(tmp_path / "digit_classifier.npz")


@pytest.mark.parametrize("data, judge", [(None, "judge64"), ("shapes", "judge64"),
                                         ("digits", "digit_classifier"), ("folder:mine", None),
                                         ("idx:mnist", None)])
def test_train_all_ends_with_the_judge_of_its_data(tmp_path, data, judge):
    stages = train.stages_for(data)
    base = ("clip", "vae32", "text2image", "vae64") if judge == "judge64" else ("clip", "vae", "text2image")
    assert stages == base + ((judge,) if judge else ())
    configs = train.stage_configs(tmp_path, "quick", {"data": data, "steps": 2})
    assert tuple(configs) == stages


@pytest.mark.parametrize("data, said", [("digits", False), ("folder:mine", True)])
def test_train_all_says_when_there_is_no_classifier_stage(tmp_path, monkeypatch, data, said):
    ran = []

    def fake_runner(job):
        def run(cfg, out, **kwargs):
            ran.append(job)
            out.mkdir(parents=True, exist_ok=True)
            for name in recipe.CLIP_FILES if job == "clip" else (zoo.FILES[job],):
                (out / name).write_bytes(b"")
            return train.FitResult(None, cfg.steps, True, cfg.steps, 0.0, None, None, [])
        return run
    monkeypatch.setattr(recipe, "RUNNERS", {job: fake_runner(job) for job in train.JOBS})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train.run_all(tmp_path, overrides={"data": data, "steps": 2}, progress=False)
    assert ran == [stage.job for stage in recipe.recipe_for(data)]
    assert ("no classifier stage: --data folder:mine has no labels" in printed.getvalue()) == said
