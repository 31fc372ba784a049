"""The training loop: checkpoints, resume, time limit, NaN guard, config checks (tiny models, a few steps)."""
import dataclasses
import time

import numpy as np
import pytest

from minidiff import train, zoo
from minidiff.checkpoint import load_checkpoint
from minidiff.datasets import captions
from minidiff.models.unet import UNetConfig
from minidiff.models.vae import VAEConfig
from minidiff.nn.layers import Linear
from minidiff.datasets import shapes

TINY_UNET = dataclasses.replace(UNetConfig.tiny(), context_dim=None, dropout=0.1)


def tiny_pixel_job(**changes):
    """A few-second pixel job: a tiny U-Net (with dropout, to check it resumes exactly) on 16x16 shapes."""
    settings = dict(model=TINY_UNET, steps=4, batch_size=4, dataset_size=16, log_every=1, checkpoint_every=2,
                    sample_every=100, warmup_steps=1, sample_steps=2, num_samples=2)
    settings.update(changes)
    return dataclasses.replace(train.PixelJob.quick(), **settings)


def run(cfg, out, **kwargs):
    return train.run_pixel(cfg, out=out, progress=False, **kwargs)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The tiny pixel job trained start to end in one go: (result, output folder, what it printed)."""
    out = tmp_path_factory.mktemp("whole")
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run(tiny_pixel_job(), out)
    return result, out, printed.getvalue()


def test_pixel_job_writes_a_complete_checkpoint_that_rebuilds_the_model(whole_run):
    result, out, printed = whole_run
    ckpt = load_checkpoint(out / "pixel.npz")
    assert result.complete and result.step == 4 and ckpt.step == 4
    assert int(ckpt.extra["complete"]) == 1 and ckpt.optim_state is None       # final: EMA weights only
    assert ckpt.config["job"] == "pixel" and ckpt.config["model"]["in_channels"] == 3
    assert ckpt.config["diffusion"] == {"schedule": "linear", "num_steps": 1000, "prediction_type": "epsilon"}
    assert ckpt.extra["loss_history"].shape == (4, 2)
    assert (out / "samples" / "pixel_step000004.png").exists() and (out / "samples" / "pixel_loss.png").exists()
    assert "4 steps (now at 4/4) in" in printed and "steps/s, final loss" in printed
    model, _ = train.load_trained(out / "pixel.npz")
    x, t = np.zeros((1, 3, 16, 16), np.float32), np.array([10])
    np.testing.assert_array_equal(model.forward(x, t), result.model.forward(x, t))


def test_resumed_run_equals_the_uninterrupted_one(whole_run, tmp_path):
    whole, whole_out, _ = whole_run
    cfg = tiny_pixel_job()
    first = run(cfg, tmp_path / "pieces", stop_at=2)
    assert first.step == 2 and not first.complete
    assert load_checkpoint(tmp_path / "pieces" / "pixel.npz").step == 2
    second = run(cfg, tmp_path / "pieces", resume=True)
    assert second.step == 4 and second.steps_run == 2
    a = load_checkpoint(whole_out / "pixel.npz").model_state
    b = load_checkpoint(tmp_path / "pieces" / "pixel.npz").model_state
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert second.history == whole.history


def test_time_limit_saves_and_stops_after_the_current_step(tmp_path, capsys):
    result = run(tiny_pixel_job(), tmp_path, deadline=time.perf_counter())
    assert result.step == 1 and not result.complete
    assert load_checkpoint(tmp_path / "pixel.npz").step == 1
    assert "time limit reached at step 1/4" in capsys.readouterr().out


def test_resume_with_another_config_is_an_error(tmp_path):
    run(tiny_pixel_job(), tmp_path, stop_at=1)
    with pytest.raises(ValueError, match="train.lr=0.001.*this run has 0.5"):
        run(tiny_pixel_job(lr=0.5), tmp_path, resume=True)
    with pytest.raises(ValueError, match="model.base_channels"):
        run(tiny_pixel_job(model=dataclasses.replace(TINY_UNET, base_channels=4, norm_groups=2)), tmp_path,
            resume=True)


def test_existing_checkpoint_needs_resume(tmp_path):
    run(tiny_pixel_job(), tmp_path, stop_at=1)
    with pytest.raises(ValueError, match="already exists: pass --resume"):
        run(tiny_pixel_job(), tmp_path)


def test_resuming_a_complete_checkpoint_does_nothing(whole_run, capsys):
    _, out, _ = whole_run
    again = run(tiny_pixel_job(), out, resume=True)
    assert again.complete and again.steps_run == 0 and "is complete (step 4); nothing to do" in capsys.readouterr().out


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = Linear(3, 1, rng=np.random.default_rng(0))
    model.config = dataclasses.make_dataclass("Config", [("width", int, 3)])()
    x = np.ones((4, 3), np.float32)

    def loss_fn(rng, step):
        y = model.forward(x)
        poisoned = model.weight.data.sum() * 0 + (np.nan if calls.append(1) or len(calls) > 5 else 0)
        loss = (y ** 2).mean() + poisoned
        model.backward(2 * y / y.size)
        return np.asarray(loss, np.float32)

    calls = []
    cfg = train.TrainConfig(steps=10, log_every=1, checkpoint_every=2, warmup_steps=0)
    config = {"job": "pixel", "model": {"width": 3}, "train": dataclasses.asdict(cfg)}
    with pytest.raises(train.TrainingDiverged, match="became nan.*between steps 5 and 6.*step 4\\) is kept"):
        train.fit("pixel", model, loss_fn, cfg, config, out=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "pixel.npz")
    assert ckpt.step == 4 and all(np.isfinite(v).all() for v in ckpt.model_state.values())


def test_make_config_applies_overrides_and_rejects_bad_values():
    cfg = train.make_config("vae", "quick", {"steps": 20, "lr": 3e-4, "vae": None})
    assert cfg.steps == 20 and cfg.lr == 3e-4 and cfg.warmup_steps <= 2
    assert train.make_config("text2image", "full").model.context_dim == 128
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train.make_config("pixel", "quick", {"steps": 0})
    with pytest.raises(ValueError, match="unknown job"):
        train.make_config("gan")


def test_step_rng_depends_on_seed_and_step_only():
    draw = lambda seed, step: train.step_rng(seed, step).standard_normal(3)     # noqa: E731
    np.testing.assert_array_equal(draw(0, 5), draw(0, 5))
    assert not np.allclose(draw(0, 5), draw(0, 6)) and not np.allclose(draw(0, 5), draw(1, 5))


def test_label_matches_agree_with_parsing_each_caption():
    """The (device-friendly) label-matrix match equals matching each caption's parse to each scene."""
    batch = shapes.sample(24, seed=3)
    matrix = captions.caption_matches(batch["labels"], batch["captions"])
    for i in range(24):
        scene = captions.attributes_from_labels(batch["labels"], i)
        for j, caption in enumerate(batch["captions"]):
            assert matrix[i, j] == captions.matches_prompt(captions.parse_caption(caption), scene), (i, j)
    assert matrix.diagonal().all()


def test_weight_decay_skips_biases_and_norms():
    model = Linear(2, 2, rng=np.random.default_rng(0))
    optimizer = train.AdamWGroups(model, lr=0.1, betas=(0.9, 0.999), weight_decay=0.5)
    assert [n for n, _ in optimizer.groups["decay"].named] == ["weight"]
    assert optimizer.groups["no_decay"].weight_decay == 0.0


def test_vae_job_stores_the_latent_scale_factor(tmp_path):
    cfg = dataclasses.replace(train.VAEJob.quick(), steps=2, batch_size=4, dataset_size=8, scale_images=8,
                              warmup_steps=1, model=VAEConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4,
                                                              image_size=16))
    train.run_vae(cfg, out=tmp_path, progress=False)
    vae, ckpt = train.load_trained(tmp_path / "vae.npz")
    assert vae.scale_factor == pytest.approx(float(ckpt.extra["scale_factor"])) and vae.scale_factor > 0


class RecordingEMA(train.loop.EMA):
    """The loop's EMA, remembering the last one made and the raw (not averaged) weights of its last update."""
    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingEMA.last = self

    def update(self):
        super().update()
        self.raw = {name: np.array(p.data, copy=True) for name, p in self.named}


@pytest.mark.parametrize("keep", ["in memory", "on disk"])
def test_finished_run_returns_the_ema_weights_with_or_without_an_output_folder(keep, tmp_path, monkeypatch):
    monkeypatch.setattr(train.loop, "EMA", RecordingEMA)
    out = None if keep == "in memory" else tmp_path
    result = run(tiny_pixel_job(ema_decay=0.5), out)
    ema = RecordingEMA.last
    weights = dict(result.model.named_parameters())
    assert result.complete and set(weights) == set(ema.shadow)
    for name, p in weights.items():
        np.testing.assert_array_equal(p.data, ema.shadow[name], err_msg=name)
    # the average lags the trained weights: the model did not simply keep its own
    assert any(not np.array_equal(ema.raw[name], ema.shadow[name]) for name in weights)
    if out is not None:                      # the returned model is the shipped one
        state = load_checkpoint(out / "pixel.npz").model_state
        for name, p in weights.items():
            np.testing.assert_array_equal(p.data, state[name], err_msg=name)


def test_make_config_rejects_a_setting_the_job_does_not_have():
    with pytest.raises(ValueError, match="--data 'folder:x': the classifier job has no 'data' setting"):
        train.make_config("classifier", "quick", {"data": "folder:x"})
    with pytest.raises(ValueError, match="--init 'unet.npz': the pixel job has no 'init' setting"):
        train.make_config("pixel", "quick", {"init": "unet.npz", "steps": 5})


def test_train_all_rejects_a_setting_no_stage_uses(tmp_path):
    with pytest.raises(ValueError, match="--rank 4: no stage of `train all` uses it"):
        train.run_all(tmp_path, overrides={"rank": 4, "steps": 2}, progress=False)
    with pytest.raises(ValueError, match="--vae 'mine.npz': `train all` chooses it for each stage itself"):
        train.run_all(tmp_path, overrides={"vae": "mine.npz"}, progress=False)
    assert not list(tmp_path.iterdir())


def test_stop_at_with_train_all_is_an_error(tmp_path):
    import argparse
    args = train.add_arguments(argparse.ArgumentParser()).parse_args(
        ["all", "--stop-at", "3", "--out", str(tmp_path / "all"), "--device", "cpu"])
    with pytest.raises(ValueError, match="--stop-at 3 names a step of one job"):
        train.main(args)
    assert not (tmp_path / "all").exists()


def test_vae_job_trains_with_perceptual_and_adversarial_terms(tmp_path, monkeypatch):
    """Both optional terms of the autoencoder's objective run in the one loop: the perceptual term
    through the frozen shipped classifier (whose weights must not move), the patch discriminator
    stepping beside the VAE once the GAN term starts."""
    from minidiff.models import discriminator as D
    steps_taken = []
    real_loss = D.PatchDiscriminator.discriminator_loss

    def counting_loss(self, real, fake):
        steps_taken.append(1)
        return real_loss(self, real, fake)
    monkeypatch.setattr(D.PatchDiscriminator, "discriminator_loss", counting_loss)
    cfg = dataclasses.replace(train.VAEJob.quick(), steps=3, batch_size=2, dataset_size=8, scale_images=8,
                              warmup_steps=1, perceptual_weight=0.5, adversarial_weight=0.1, adversarial_start=1,
                              model=VAEConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4, image_size=32))
    judges = []
    real_load = zoo.load_classifier
    monkeypatch.setattr(zoo, "load_classifier", lambda *a, **k: judges.append(real_load(*a, **k)) or judges[-1])
    judge_before = {n: p.data.copy() for n, p in real_load().named_parameters()}
    result = train.run_vae(cfg, out=tmp_path, progress=False)
    assert result.complete and np.isfinite(result.final_loss)
    assert len(steps_taken) == 2                            # steps 1 and 2, not step 0
    (judge,) = judges
    assert all(np.array_equal(judge_before[n], p.data) for n, p in judge.named_parameters())
    with pytest.raises(ValueError, match="perceptual_weight must be a number >= 0"):
        dataclasses.replace(cfg, perceptual_weight=-1.0)
    with pytest.raises(ValueError, match="sees 32x32 images, the VAE 16x16"):
        train.run_vae(dataclasses.replace(cfg, model=VAEConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4,
                                                               image_size=16)), out=tmp_path / "b", progress=False)


def test_drop_captions_replaces_whole_rows_the_same_in_every_view():
    """Conditioning dropout: a dropped row is the empty caption in its states AND its mask; p = 0
    keeps every caption, p = 1 drops every one, and about p of the rows go in between."""
    from minidiff.train.data import drop_captions
    rng = np.random.default_rng(0)
    states, masks = rng.standard_normal((400, 5, 3)).astype(np.float32), rng.random((400, 5)) < 0.5
    empty_state, empty_mask = np.zeros((1, 5, 3), np.float32), np.zeros((1, 5), bool)
    kept = drop_captions(np.random.default_rng(1), 0.0, (states, empty_state), (masks, empty_mask))
    assert np.array_equal(kept[0], states) and np.array_equal(kept[1], masks)
    gone = drop_captions(np.random.default_rng(1), 1.0, (states, empty_state), (masks, empty_mask))
    assert not gone[0].any() and not gone[1].any()
    half_states, half_masks = drop_captions(np.random.default_rng(1), 0.3, (states, empty_state), (masks, empty_mask))
    dropped = ~half_states.reshape(400, -1).any(axis=1)
    assert 0.2 < dropped.mean() < 0.4
    assert np.array_equal(half_states[~dropped], states[~dropped]) and np.array_equal(half_masks[~dropped], masks[~dropped])
    assert not half_masks[dropped].any()


def test_draw_latents_samples_the_posterior():
    from minidiff.train.data import draw_latents
    means = np.full((20000, 2), [1.0, -3.0], np.float32)
    stds = np.full((20000, 2), [0.5, 2.0], np.float32)
    z = draw_latents(np.random.default_rng(0), means, stds)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), [1.0, -3.0], atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0], rtol=0.03)


def test_the_vae_job_can_see_pink_and_says_whether_it_learnt_it(tmp_path):
    """--extra-fraction F: about F of the VAE's scenes get a pink object (the same scenes otherwise),
    and the finished job reports the held-out pink and base reconstructions in their own colour."""
    from minidiff.train.data import load_data
    plain = load_data("shapes", 32, 400, 0).images
    pink = load_data("shapes", 32, 400, 0, extra_fraction=0.3).images
    changed = (np.abs(plain - pink).reshape(400, -1).max(axis=1) > 0).mean()
    assert 0.2 < changed < 0.4
    cfg = dataclasses.replace(train.VAEJob.quick(), steps=2, batch_size=2, dataset_size=8, scale_images=8,
                              warmup_steps=0, extra_fraction=0.3,
                              model=VAEConfig(base_channels=8, channel_mults=(1, 2, 4), norm_groups=4, image_size=32))
    result = train.run_vae(cfg, out=None, progress=False)
    assert set(result.evaluation) == {"pink", "base"}
    assert all(0 <= v <= 1 for v in result.evaluation.values())
