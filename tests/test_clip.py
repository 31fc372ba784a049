"""mini-CLIP: the contrastive loss and its gradients, the whole model's gradients, which captions
describe which images, bad input, and a short training run that learns."""
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.datasets import shapes
from minidiff import evaluate, train, zoo
from minidiff.datasets.captions import caption_matches
from minidiff.models.clip import (CLIPConfig, MiniCLIP, clip_loss_and_backward,
                                  contrastive_loss, contrastive_loss_backward, l2_normalize,
                                  l2_normalize_backward)
from minidiff.checkpoint import load_checkpoint, load_into
from minidiff.models.text_encoder import TextEncoder, TextEncoderConfig
from minidiff.nn.gradcheck import check_module, gradcheck
from minidiff.nn.module import Module


def random_positives(rng, batch, extra=0):
    """A (B, B + extra) bool matrix: a True diagonal in the first B columns and a few extra (not
    symmetric) positives; the extra columns (hard-negative captions) mostly False."""
    positives = rng.random((batch, batch + extra)) < 0.2
    np.fill_diagonal(positives[:, :batch], True)
    return positives


def naive_contrastive_loss(u, v, logit_scale, positives):
    """Loop-by-loop reference: 1/2 (mean over images of CE against their captions' targets, over
    all M captions + mean over the B own captions of CE against their images' targets)."""
    B, M = len(u), len(v)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = math.exp(min(logit_scale, math.log(100)))
    logits = [[s * float(u[i] @ v[j]) for j in range(M)] for i in range(B)]
    total = 0.0
    for i in range(B):                                   # image i -> captions
        row = logits[i]
        log_z = math.log(sum(math.exp(z) for z in row))
        targets = [j for j in range(M) if positives[i][j]]
        total += sum(-(row[j] - log_z) for j in targets) / len(targets) / (2 * B)
    for j in range(B):                                   # caption j -> images
        column = [logits[i][j] for i in range(B)]
        log_z = math.log(sum(math.exp(z) for z in column))
        targets = [i for i in range(B) if positives[i][j]]
        total += sum(-(column[i] - log_z) for i in targets) / len(targets) / (2 * B)
    return total


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(2, 6), dim=st.integers(2, 5), seed=st.integers(0, 2 ** 16), extra=st.integers(0, 6))
def test_contrastive_loss_matches_loop_reference(batch, dim, seed, extra):
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((batch, dim)), rng.standard_normal((batch + extra, dim))
    positives = random_positives(rng, batch, extra)
    logit_scale = rng.uniform(0.0, 4.0)
    loss, logits, _ = contrastive_loss(u, v, np.asarray(logit_scale), positives)
    assert logits.shape == (batch, batch + extra)
    assert float(loss) == pytest.approx(naive_contrastive_loss(u, v, logit_scale, positives), rel=1e-10)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(2, 5), dim=st.integers(2, 4), seed=st.integers(0, 2 ** 16),
       with_duplicates=st.booleans(), extra=st.integers(0, 4))
def test_contrastive_loss_gradients_match_finite_differences(batch, dim, seed, with_duplicates, extra):
    """d loss / d(u, v, logit_scale), float64, through the normalisation and the temperature, with
    and without extra (hard-negative) captions."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((batch, dim)), rng.standard_normal((batch + extra, dim))
    logit_scale = np.asarray(rng.uniform(0.5, 3.0))
    positives = random_positives(rng, batch, extra) if with_duplicates or extra else None

    def loss_and_cache(u, v, logit_scale):
        loss, _, cache = contrastive_loss(u, v, logit_scale, positives)
        return loss, cache

    errors = gradcheck(loss_and_cache, {"u": u, "v": v, "logit_scale": logit_scale},
                       contrastive_loss_backward, eps=1e-5, seed=seed + 1)
    assert max(errors.values()) < 1e-6, errors


def test_l2_normalize_gradient_is_orthogonal_to_the_unit_vector():
    rng = np.random.default_rng(0)
    x, d_out = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    x_hat, cache = l2_normalize(x)
    dx = l2_normalize_backward(d_out, cache)
    np.testing.assert_allclose(np.linalg.norm(x_hat, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose((dx * x).sum(axis=1), 0.0, atol=1e-12)   # scaling x changes nothing
    assert gradcheck(l2_normalize, [x], l2_normalize_backward, seed=7)["x0"] < 1e-7


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(2, 16), seed=st.integers(0, 2 ** 16), scale=st.floats(-2.0, 6.0))
def test_loss_is_log_batch_size_for_identical_embeddings(batch, seed, scale):
    """All images alike and all captions alike: every softmax is uniform, so loss = log B
    whatever the targets (they sum to one in each row and column)."""
    rng = np.random.default_rng(seed)
    u = np.repeat(rng.standard_normal((1, 4)), batch, axis=0)
    v = np.repeat(rng.standard_normal((1, 4)), batch, axis=0)
    loss, _, _ = contrastive_loss(u, v, np.asarray(scale), random_positives(rng, batch))
    assert float(loss) == pytest.approx(math.log(batch), rel=1e-12)


def test_logit_scale_is_capped_at_100_with_no_gradient_beyond():
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss_at_cap, logits, _ = contrastive_loss(u, v, np.asarray(math.log(100.0)))
    loss_above, logits_above, cache = contrastive_loss(u, v, np.asarray(7.0))
    np.testing.assert_allclose(logits_above, logits, rtol=1e-12)
    assert np.abs(logits).max() <= 100.0 + 1e-9
    assert float(contrastive_loss_backward(1.0, cache)[2]) == 0.0


class LossOfMiniCLIP(Module):
    """The scalar loss of a MiniCLIP with fixed positives, as a module for check_module."""

    def __init__(self, model, positives):
        self.model, self.positives = model, positives

    def forward(self, images, ids, mask):
        return self.model(images, ids, mask, self.positives)[0]

    def backward(self, d_loss):
        return self.model.backward(d_loss), None, None


@pytest.mark.parametrize("pool_grid, extra", [(1, 0), (2, 2)], ids=["global-pool", "grid-pool+hard-negatives"])
def test_whole_miniclip_gradients_match_finite_differences(pool_grid, extra):
    """float64 (nn.gradcheck.check_module): the images and every parameter of the tiny model (up to
    12 entries each), logit_scale included, with duplicate positives in the batch; also with a
    2 x 2 pooling grid and two extra (hard-negative) captions."""
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (4, 3, 8, 8))
    lengths = [5, 3, 8, 2, 4, 6][:4 + extra]
    ids = np.zeros((4 + extra, 8), np.int64)
    mask = np.arange(8)[None] < np.array(lengths)[:, None]
    for b, n in enumerate(lengths):
        ids[b, :n] = [1] + list(rng.integers(3, 32, n - 2)) + [2]
    positives = np.zeros((4, 4 + extra), dtype=bool)
    positives[:, :4] = np.eye(4, dtype=bool)
    positives[0, 2] = positives[2, 0] = positives[1, 3] = True
    model = MiniCLIP(dataclasses.replace(CLIPConfig.tiny(), pool_grid=pool_grid), seed=0)
    report = check_module(LossOfMiniCLIP(model, positives), (images, ids, mask), seed=3, eps=1e-5,
                          max_coords=12)
    print(report)
    assert len(report.rows) == 1 + len(model.named_parameters())
    for row in report.rows:
        # key biases have no gradient in exact math: compare rounding noise absolutely there
        assert row.rel_error < 1e-6 or row.max_abs_error < 1e-9, row


def test_every_caption_describes_its_own_image_and_omitted_words_match_anything():
    batch = shapes.sample(48, seed=3)
    match = caption_matches(batch["labels"], batch["captions"])
    assert match.shape == (48, 48) and match.diagonal().all()
    labels = shapes.labels_from_attributes([
        dict(num_objects=1, shape="circle", colour="red", size="small", position="left"),
        dict(num_objects=1, shape="circle", colour="red", size="large", position="top"),
        dict(num_objects=1, shape="square", colour="red", size="small", position="left")])
    captions = ["a red circle", "a small red circle on the left", "a red circle above a blue square"]
    np.testing.assert_array_equal(caption_matches(labels, captions), [[True, True, False],
                                                                     [True, False, False],
                                                                     [False, False, False]])


@pytest.mark.parametrize("what, message", [
    ("images", r"images must be \(B, 3, 8, 8\)"),
    ("count", "3 images but 2 captions"),
    ("positives", "True diagonal"),
    ("ids", "outside the vocabulary"),
])
def test_bad_inputs_raise_clear_errors(what, message):
    model = MiniCLIP(CLIPConfig.tiny(), seed=0)
    images = np.zeros((3, 3, 8, 8), np.float32)
    ids, mask = np.ones((3, 4), np.int64), np.ones((3, 4), bool)
    positives = None
    if what == "images":
        images = np.zeros((3, 3, 16, 16), np.float32)
    elif what == "count":
        ids, mask = ids[:2], mask[:2]
    elif what == "positives":
        positives = np.zeros((3, 3), bool)
    else:
        ids[0, 1] = 99
    with pytest.raises(ValueError, match=message):
        model(images, ids, mask, positives)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="norm_groups"):
        CLIPConfig(channels=(12, 24), norm_groups=8)
    with pytest.raises(ValueError, match="cannot be halved"):
        CLIPConfig(image_size=20, channels=(8, 8, 8, 8))


def test_short_training_run_learns_and_checkpoint_round_trips(tmp_path):
    """80 steps of a small model on 16x16 shapes through the one training loop (the clip job): the
    loss falls, held-out retrieval beats chance clearly, and the saved model, text encoder and
    tokenizer give the same outputs after loading."""
    tokenizer = train.train_tokenizer(384, corpus_size=4000)
    tokenizer.save(tmp_path / "given_tokenizer.json")
    config = CLIPConfig(text=TextEncoderConfig(vocab_size=384, max_length=24, width=32, num_layers=1,
                                               num_heads=2, mlp_ratio=2),
                        image_size=16, channels=(16, 32, 32), norm_groups=4, embed_dim=16)
    job = dataclasses.replace(train.ClipJob.quick(), model=config, steps=80, batch_size=32, lr=3e-3,
                              warmup_steps=4, dataset_size=2048, log_every=5,
                              tokenizer=str(tmp_path / "given_tokenizer.json"))
    result = train.run_clip(job, out=tmp_path, progress=False)
    model = result.model
    losses = [loss for _, loss in result.history]
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    print(f"loss {first:.3f} -> {last:.3f}; held-out {result.evaluation}; {result.seconds:.1f} s")
    assert result.complete and last < first - 1.0
    assert result.evaluation["top1"] > 4 * result.evaluation["chance"]
    assert len(result.metrics) == len(result.history) and {"temperature", "heldout_top1"} <= set(result.metrics[0])
    loaded, loaded_tokenizer = zoo.load_clip(tmp_path)
    assert loaded_tokenizer.merges == tokenizer.merges
    batch = shapes.sample(8, seed=5, size=16)
    ids, mask = tokenizer.encode_batch(batch["captions"], max_length=24)
    np.testing.assert_allclose(loaded.similarity(batch["images"], ids, mask),
                               model.similarity(batch["images"], ids, mask), rtol=1e-6, atol=1e-6)
    again = evaluate.retrieval_accuracy(loaded, loaded_tokenizer, num_batches=4, batch_size=64, seed=job.seed)
    assert again == pytest.approx(result.evaluation)
    text_encoder = zoo.load_text_encoder(tmp_path / "text_encoder.npz")
    assert zoo.checkpoint_job(load_checkpoint(tmp_path / "text_encoder.npz")) == "text_encoder"
    np.testing.assert_array_equal(text_encoder(ids, mask)[0], model.text_encoder(ids, mask)[0])
    report = evaluate.evaluate_checkpoint(tmp_path / "clip.npz", num_images=32, verbose=False)
    assert report["job"] == "clip" and list(report["probe"]) == ["above", "below", "to the left of", "to the right of"]
    assert report["retrieval"]["top1"] > 4 * report["retrieval"]["chance"]


def test_matches_pytorch_contrastive_loss_in_float64():
    """CLIP's loss written with torch autograd (identity positives): loss and all three gradients."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    u, v = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    loss, _, cache = contrastive_loss(u, v, np.asarray(2.5))
    d_u, d_v, d_scale = contrastive_loss_backward(1.0, cache)
    tu, tv = torch.tensor(u, requires_grad=True), torch.tensor(v, requires_grad=True)
    ts = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    un, vn = torch.nn.functional.normalize(tu, dim=1), torch.nn.functional.normalize(tv, dim=1)
    logits = ts.clamp(max=math.log(100)).exp() * un @ vn.T
    labels = torch.arange(6)
    t_loss = (torch.nn.functional.cross_entropy(logits, labels)
              + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    t_loss.backward()
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-12)
    for mine, theirs in ((d_u, tu.grad), (d_v, tv.grad), (d_scale, ts.grad)):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-10, atol=1e-14)
