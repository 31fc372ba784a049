"""Classifier guidance: the noise-aware classifier (minidiff/models/noisy_classifier.py) gradient-checked
in float64, its input gradient grad_x log p(y | x_t) against finite differences, and the guidance
formula eps - s sqrt(1 - abar_t) grad (minidiff/diffusion/guidance.py)."""
import numpy as np
import pytest

from minidiff.diffusion.guidance import classifier_guided_eps, classifier_guided_model_fn
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig, log_prob_gradient
from minidiff.nn import functional as F
from minidiff.nn.gradcheck import check_module, gradcheck
from minidiff.nn.module import Module, no_grad


def tiny():
    return NoisyClassifier(NoisyClassifierConfig.tiny(), seed=0).to(dtype=np.float64)


def test_noisy_classifier_gradients_match_finite_differences():
    classifier = tiny()
    rng = np.random.default_rng(0)
    for p in classifier.parameters():              # the ResBlocks' zero-free start: every path counts
        if np.all(p.data == 0):
            p.data = 0.1 * rng.standard_normal(p.shape)

    class AtFixedT(Module):
        def _children(self):
            yield "classifier", classifier

        def forward(self, x):
            return classifier.forward(x, np.array([10.0, 700.0]))

        def backward(self, d):
            return classifier.backward(d)

    report = check_module(AtFixedT(), [rng.standard_normal((2, 2, 4, 4))], max_coords=6)
    assert report.passed(1e-6), str(report)


def test_log_prob_gradient_is_the_derivative_of_log_p():
    classifier = tiny()
    rng = np.random.default_rng(1)
    x, t, y = rng.standard_normal((3, 2, 4, 4)), np.array([5.0, 300.0, 900.0]), np.array([0, 2, 1])

    def total_log_p(x):
        with no_grad():
            log_p, _ = F.log_softmax(classifier.forward(x, t))
        return log_p[np.arange(3), y].sum()

    grad = log_prob_gradient(classifier, x, t, y)
    errors = gradcheck(lambda x: np.asarray(total_log_p(x)), [x], [grad], dout=np.asarray(1.0))
    assert errors["x0"] < 1e-6
    assert all(p.grad is None for p in classifier.parameters())          # the classifier is left as it was
    with no_grad(), pytest.raises(RuntimeError, match="outside no_grad"):
        log_prob_gradient(classifier, x, t, y)


def test_classifier_guidance_shifts_eps_by_the_scaled_gradient():
    schedule = NoiseSchedule.make("scaled_linear", 1000)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    eps, grad = rng.standard_normal(x.shape).astype(np.float32), rng.standard_normal(x.shape).astype(np.float32)
    t = np.array([100, 800])
    guided = classifier_guided_model_fn(lambda x, t: eps, lambda x, t: grad, schedule, 3.0)(x, t)
    expected = eps - 3.0 * np.sqrt(1 - schedule.alphas_cumprod[t])[:, None, None, None] * grad
    np.testing.assert_allclose(guided, expected, rtol=1e-6, atol=1e-6)
    assert guided.dtype == np.float32
    assert classifier_guided_eps(eps, grad, np.float32(0.5), 0.0) is eps


def test_noisy_classifier_job_writes_a_loadable_classifier(tmp_path):
    from minidiff import zoo
    if not (zoo.PRETRAINED_DIR / "vae.npz").is_file():
        pytest.skip("needs the shipped VAE")
    from minidiff.train.config import make_config
    from minidiff.train.finetune import NOISY_CLASSIFIER_FILE, load_noisy_classifier, run_noisy_classifier
    cfg = make_config("noisy_classifier", "quick", {"steps": 2, "batch_size": 4, "dataset_size": 16, "log_every": 1})
    result = run_noisy_classifier(cfg, out=tmp_path, progress=False)
    loaded = load_noisy_classifier(tmp_path / NOISY_CLASSIFIER_FILE)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with no_grad():
        np.testing.assert_allclose(loaded(x, np.array([10, 900])), result.model(x, np.array([10, 900])), rtol=1e-5)
