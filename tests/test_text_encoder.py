"""The text encoder: shapes, the end-token pooling, causal and padding masks, gradients, bad input.

Token ids here are small random integers (no tokenizer needed): <start>=1, words in
[3, vocab), <end>=2, then <pad>=0, with the mask True on <start>..<end>.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.models.text_encoder import (TextEncoder, TextEncoderConfig, attention_mask,
                                          end_positions)
from minidiff.nn.gradcheck import check_module


def random_batch(rng, config, batch, length, lengths=None):
    """ids (B, L) int64 and mask (B, L) bool with right padding; ``lengths`` counts <start>..<end>."""
    if lengths is None:
        lengths = rng.integers(2, length + 1, size=batch)
    ids = np.zeros((batch, length), np.int64)
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = 1, 2
        ids[b, 1:n - 1] = rng.integers(3, config.vocab_size, size=n - 2)
    return ids, mask


def on_device(model, xp):
    return model.to("gpu") if xp.__name__ == "cupy" else model


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 4), length=st.integers(2, 8), seed=st.integers(0, 2 ** 16))
def test_pooled_is_the_state_at_the_end_token(batch, length, seed):
    config = TextEncoderConfig.tiny()
    rng = np.random.default_rng(seed)
    ids, mask = random_batch(rng, config, batch, length)
    model = TextEncoder(config, seed=seed).eval()
    states, pooled = model(ids, mask)
    assert states.shape == (batch, length, config.width) and pooled.shape == (batch, config.width)
    end = np.argmax(ids == 2, axis=1)                       # where the <end> id sits
    np.testing.assert_array_equal(end_positions(mask), end)
    np.testing.assert_array_equal(pooled, states[np.arange(batch), end])


def test_attention_mask_is_causal_and_hides_pad_keys():
    mask = np.array([[True, True, True, False]])
    expected = np.array([[1, 0, 0, 0],
                         [1, 1, 0, 0],
                         [1, 1, 1, 0],
                         [1, 1, 1, 0]], bool)               # the pad query sees only real keys
    np.testing.assert_array_equal(attention_mask(mask)[0, 0], expected)


def test_causal_mask_blocks_the_future(xp):
    config = TextEncoderConfig.tiny()
    rng = np.random.default_rng(0)
    ids, mask = random_batch(rng, config, 3, 8, lengths=[8, 8, 8])
    model = on_device(TextEncoder(config, seed=0), xp).eval()
    k = 4
    changed = ids.copy()
    changed[:, k] = 3 + (ids[:, k] - 3 + 5) % (config.vocab_size - 3)   # another word id
    before, after = (host(model(i, mask)[0]) for i in (ids, changed))
    np.testing.assert_allclose(after[:, :k], before[:, :k], atol=1e-6, rtol=0)
    assert np.abs(after[:, k:] - before[:, k:]).max() > 1e-3, "changing token k must change state k"


def test_padding_does_not_change_real_token_states(xp):
    config = TextEncoderConfig.tiny()
    rng = np.random.default_rng(1)
    ids, mask = random_batch(rng, config, 3, 5, lengths=[5, 3, 2])
    model = on_device(TextEncoder(config, seed=2), xp).eval()
    longer = np.zeros((3, 8), np.int64)
    longer[:, :5] = ids
    longer_mask = np.zeros((3, 8), bool)
    longer_mask[:, :5] = mask
    longer[~longer_mask] = rng.integers(0, config.vocab_size, size=(~longer_mask).sum())  # junk pads
    short_states, short_pooled = (host(a) for a in model(ids, mask))
    long_states, long_pooled = (host(a) for a in model(longer, longer_mask))
    np.testing.assert_allclose(long_pooled, short_pooled, atol=1e-5, rtol=0)
    np.testing.assert_allclose(long_states[:, :5][mask], short_states[mask], atol=1e-5, rtol=0)


def _max_relative_error(analytic, numeric, floor=1e-3):
    """max |a - n| / max(max |n|, floor): the floor keeps gradients that are zero in exact math
    (the key bias: a shift of every key leaves the softmax unchanged) from dividing noise by noise."""
    return float(np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), floor))


def test_whole_model_gradients_match_finite_differences():
    """float64 central differences (nn.gradcheck.check_module) of sum(states * G_s) + sum(pooled * G_p)
    for every parameter tensor (up to 12 random entries of each)."""
    config = TextEncoderConfig.tiny()
    model = TextEncoder(config, seed=3)
    ids, mask = random_batch(np.random.default_rng(4), config, 3, 7, lengths=[7, 4, 2])
    report = check_module(model, (ids, mask), seed=5, eps=1e-5, max_coords=12)
    print(report)
    assert {row.name for row in report.rows} == {name for name, _ in model.named_parameters()}
    for row in report.rows:
        # the key bias has no gradient in exact math (a shift of every key leaves the softmax
        # unchanged): there both sides are rounding noise, so check the absolute error instead
        assert row.rel_error < 1e-6 or row.max_abs_error < 1e-8, row


def test_pooled_gradient_reaches_only_through_the_end_token():
    """With d_states = 0, the embedding of a pad position gets no gradient (nothing downstream
    of the end token depends on it), while the real tokens' rows do."""
    config = TextEncoderConfig.tiny()
    model = TextEncoder(config, seed=5).to(dtype=np.float64)
    ids = np.array([[1, 7, 2, 0, 0]])
    mask = ids != 0
    mask[0, 0] = True
    model(ids, mask)
    model.backward(None, np.ones((1, config.width)))
    d_token = model.token_embedding.weight.grad
    d_position = model.position_embedding.grad
    assert np.abs(d_token[7]).sum() > 0 and np.abs(d_position[:3]).sum() > 0
    np.testing.assert_array_equal(d_token[0], 0.0)           # <pad> id: only at pad positions
    np.testing.assert_array_equal(d_position[3:], 0.0)


def test_gradients_add_up_over_two_backward_passes():
    config = TextEncoderConfig.tiny()
    model = TextEncoder(config, seed=6).to(dtype=np.float64)
    ids, mask = random_batch(np.random.default_rng(7), config, 2, 5)
    d_states = np.random.default_rng(8).standard_normal((2, 5, config.width))
    grads = []
    for _ in range(2):
        model(ids, mask)
        model.backward(d_states)
        grads.append(model.position_embedding.grad.copy())
    np.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-12)


@pytest.mark.parametrize("ids, mask, message", [
    (np.ones((2, 3), np.int64), np.ones((2, 4), bool), "same shape"),
    (np.array([[1, 32, 2]]), np.ones((1, 3), bool), "token id 32 is outside"),
    (np.array([[1, -1, 2]]), np.ones((1, 3), bool), "token id -1 is outside"),
    (np.ones((1, 9), np.int64), np.ones((1, 9), bool), "exceeds max_length=8"),
    (np.ones((1, 3)), np.ones((1, 3), bool), "must be integers"),
    (np.ones((1, 3), np.int64), np.ones((1, 3), np.int64), "mask must be bool"),
    (np.ones((1, 3), np.int64), np.array([[True, False, True]]), "right-padded"),
    (np.ones((1, 3), np.int64), np.array([[False, False, False]]), "real first token"),
    (np.ones(3, np.int64), np.ones(3, bool), r"\(batch, length\)"),
])
def test_bad_inputs_raise_clear_errors(ids, mask, message):
    model = TextEncoder(TextEncoderConfig.tiny(), seed=0)
    with pytest.raises(ValueError, match=message):
        model(ids, mask)


@pytest.mark.parametrize("field, value", [("width", 15), ("num_layers", 0), ("gelu_approximate", "fast"),
                                          ("num_heads", "4"), ("vocab_size", 38.5), ("max_length", None),
                                          ("layer_norm_eps", "small"), ("layer_norm_eps", 0.0)])
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=f"TextEncoderConfig: {field}"):
        TextEncoderConfig(**{field: value})


def test_matches_pytorch_twin_in_float64():
    """The same weights in a PyTorch transformer (tests/torch_twins.py): states, pooled and every
    parameter gradient agree to float64 precision."""
    torch = pytest.importorskip("torch")
    from minidiff.bench.twins import make_text_encoder_twin, twin_grads
    for approximate in ("none", "tanh"):
        config = TextEncoderConfig(vocab_size=40, max_length=8, width=16, num_layers=2, num_heads=4,
                                   mlp_ratio=2, gelu_approximate=approximate)
        model = TextEncoder(config, seed=9).to(dtype=np.float64)
        twin = make_text_encoder_twin(config, model.state_dict())
        rng = np.random.default_rng(10)
        ids, mask = random_batch(rng, config, 3, 6, lengths=[6, 3, 2])
        g_states, g_pooled = rng.standard_normal((3, 6, 16)), rng.standard_normal((3, 16))
        model.zero_grad()
        states, pooled = model(ids, mask)
        model.backward(g_states, g_pooled)
        t_states, t_pooled = twin(torch.from_numpy(ids), torch.from_numpy(mask))
        ((t_states * torch.from_numpy(g_states)).sum() + (t_pooled * torch.from_numpy(g_pooled)).sum()).backward()
        errors = {"states": _max_relative_error(states, t_states.detach().numpy()),
                  "pooled": _max_relative_error(pooled, t_pooled.detach().numpy())}
        reference = twin_grads(twin)
        for name, p in model.named_parameters():
            errors[name] = _max_relative_error(p.grad, reference[name])
        name = max(errors, key=errors.get)
        print(f"text encoder vs PyTorch (gelu {approximate}): max relative error {errors[name]:.2e} ({name})")
        assert errors[name] < 1e-10, errors
