"""AdamW, EMA, gradient clipping and the learning-rate schedule against hand-computed numbers
(and against PyTorch where it is installed)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.nn.module import Parameter
from minidiff.optim import EMA, AdamW, clip_grad_norm, warmup_cosine


def _param(xp, values, dtype=np.float64):
    return Parameter(xp.asarray(np.array(values, dtype=dtype)))


# -- AdamW -----------------------------------------------------------------------------------------
def test_adamw_two_steps_match_hand_computation(xp):
    p = _param(xp, [1.0, -2.0, 0.5])
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    # step 1, g = (0.5, -1, 0): theta (1 - 0.1*0.1) = (0.99, -1.98, 0.495); m_hat = g, v_hat = g^2,
    # so the Adam step is lr * sign(g) = 0.1 where g != 0 and 0 where g = 0
    p.grad = xp.asarray(np.array([0.5, -1.0, 0.0]))
    opt.step()
    np.testing.assert_allclose(backend.to_numpy(p.data), [0.89, -1.88, 0.495], rtol=0, atol=1e-7)
    # step 2, g = (0.1, 0.3, -2): m = 0.9 m + 0.1 g, v = 0.999 v + 0.001 g^2, corrected by 1 - beta^2
    p.grad = xp.asarray(np.array([0.1, 0.3, -2.0]))
    opt.step()
    g1, g2 = np.array([0.5, -1.0, 0.0]), np.array([0.1, 0.3, -2.0])
    theta1 = np.array([1.0, -2.0, 0.5]) * (1 - 0.01) - 0.1 * g1 / (np.abs(g1) + 1e-8)   # eps kept
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.999 ** 2)
    expected = theta1 * (1 - 0.01) - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(backend.to_numpy(p.data), expected, rtol=0, atol=1e-12)
    # the same numbers, computed independently with torch.optim.AdamW and written down
    np.testing.assert_allclose(backend.to_numpy(p.data), [0.80079591, -1.81841514, 0.56446368], atol=1e-8)
    assert opt.step_count == 2


def test_adamw_skips_parameters_without_grad():
    a, b = _param(np, [1.0, 2.0]), _param(np, [3.0])
    opt = AdamW([a, b], lr=0.1, weight_decay=0.5)
    a.grad = np.array([1.0, 1.0])
    opt.step()
    assert b.data.tolist() == [3.0]            # no grad: neither decay nor update
    assert set(opt.exp_avg) == {"0"}


def test_adamw_lr_passed_to_step_is_used_and_kept():
    p = _param(np, [0.0])
    opt = AdamW([p], lr=1.0, weight_decay=0.0)
    p.grad = np.array([1.0])
    opt.step(lr=0.25)                          # first Adam step moves by lr * sign(g)
    np.testing.assert_allclose(p.data, [-0.25], atol=1e-7)
    assert opt.lr == 0.25


def test_adamw_keeps_float32_parameters_float32():
    p = _param(np, [1.0, 2.0], dtype=np.float32)
    opt = AdamW([p], lr=0.1)
    p.grad = np.array([0.1, 0.2], np.float32)
    opt.step()
    assert p.data.dtype == np.float32 and opt.exp_avg["0"].dtype == np.float32


def test_adamw_matches_torch_over_steps_with_changing_lr():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    params = [Parameter(a.copy()) for a in init]
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = AdamW(params, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    topt = torch.optim.AdamW(tparams, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    for step in range(6):
        lr = 3e-3 * (step + 1) / 6
        for group in topt.param_groups:
            group["lr"] = lr
        for p, tp in zip(params, tparams):
            g = rng.standard_normal(p.shape)
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step(lr=lr)
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=0, atol=1e-12)


def test_adamw_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    params = [Parameter(rng.standard_normal((2, 3))) for _ in range(2)]
    grads = [[rng.standard_normal((2, 3)) for _ in params] for _ in range(6)]
    opt = AdamW(params, lr=0.01, weight_decay=0.1)

    def run(optimizer, ps, steps):
        for gs in steps:
            for p, g in zip(ps, gs):
                p.grad = g.copy()
            optimizer.step()

    run(opt, params, grads[:3])
    copies = [Parameter(p.data.copy()) for p in params]
    resumed = AdamW(copies, lr=1.0).load_state_dict(opt.state_dict())
    assert resumed.step_count == 3 and resumed.lr == 0.01
    run(opt, params, grads[3:])
    run(resumed, copies, grads[3:])
    for p, q in zip(params, copies):
        assert np.array_equal(p.data, q.data)


def test_adamw_load_state_dict_rejects_mis_shaped_moment():
    p = _param(np, [1.0, 2.0])
    opt = AdamW([p])
    p.grad = np.ones(2)
    opt.step()
    state = opt.state_dict()
    state["exp_avg"]["0"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"exp_avg\['0'\] has shape \(3,\)"):
        AdamW([_param(np, [1.0, 2.0])]).load_state_dict(state)


def test_adamw_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="betas"):
        AdamW([_param(np, [1.0])], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        AdamW([_param(np, [1.0])], lr=-1.0)


# -- EMA -------------------------------------------------------------------------------------------
def test_ema_without_warmup_is_geometric_average(xp):
    p = _param(xp, [0.0, 10.0])
    ema = EMA([p], decay=0.9, warmup=False)
    for value in ([1.0, 0.0], [2.0, 0.0]):
        p.data = xp.asarray(np.array(value))
        ema.update()
    # s1 = 0.9*(0,10) + 0.1*(1,0) = (0.1, 9);  s2 = 0.9*s1 + 0.1*(2,0) = (0.29, 8.1)
    np.testing.assert_allclose(backend.to_numpy(ema.shadow["0"]), [0.29, 8.1], atol=1e-12)


def test_ema_warmup_ramps_the_decay():
    p = _param(np, [0.0])
    ema = EMA([p], decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)           # (1 + 0) / (10 + 0)
    p.data = np.array([1.0])
    ema.update()
    np.testing.assert_allclose(ema.shadow["0"], [0.9])          # 0.1 * 0 + 0.9 * 1
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.999


def test_ema_swap_twice_restores_the_model_and_copy_to_writes_average():
    p = _param(np, [1.0, 2.0])
    ema = EMA([p], decay=0.5, warmup=False)
    p.data = np.array([3.0, 4.0])
    ema.update()                                                # shadow = (2, 3)
    ema.swap()
    np.testing.assert_allclose(p.data, [2.0, 3.0])
    ema.swap()
    np.testing.assert_allclose(p.data, [3.0, 4.0])
    ema.copy_to()
    np.testing.assert_allclose(p.data, [2.0, 3.0])
    p.data[0] = 99.0                                            # a copy, not the shadow itself
    assert ema.shadow["0"][0] == 2.0


def test_ema_state_dict_round_trip():
    p = _param(np, [1.0, 2.0])
    ema = EMA([p], decay=0.9)
    p.data = np.array([0.0, 0.0])
    ema.update()
    other = EMA([_param(np, [5.0, 5.0])], decay=0.5).load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.9
    np.testing.assert_array_equal(other.shadow["0"], ema.shadow["0"])


# -- gradient clipping -----------------------------------------------------------------------------
def test_clip_grad_norm_scales_to_max_norm_and_returns_norm_before(xp):
    a, b = _param(xp, [0.0, 0.0]), _param(xp, [0.0])
    a.grad, b.grad = xp.asarray(np.array([3.0, 0.0])), xp.asarray(np.array([4.0]))
    norm = clip_grad_norm([a, b], max_norm=1.0)                 # ||(3, 0, 4)|| = 5
    assert norm.shape == () and backend.get_array_module(norm) is xp
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(backend.to_numpy(a.grad), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(b.grad), [0.8], rtol=1e-6)


def test_clip_grad_norm_leaves_small_gradients_alone():
    a = _param(np, [0.0, 0.0])
    a.grad = np.array([0.3, 0.4])
    assert float(clip_grad_norm([a], max_norm=1.0)) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad, [0.3, 0.4])


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal((3, 3)), rng.standard_normal(4)]
    params = [Parameter(np.zeros_like(g)) for g in grads]
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, tp, g in zip(params, tparams, grads):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    norm = clip_grad_norm(params, 0.7)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 0.7)
    assert float(norm) == pytest.approx(float(tnorm), rel=1e-12)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


# -- learning-rate schedule ------------------------------------------------------------------------
def test_warmup_cosine_hits_base_lr_at_warmup_end_and_min_lr_at_the_end():
    kw = dict(base_lr=1e-3, warmup_steps=100, total_steps=1000, min_lr=1e-5)
    assert warmup_cosine(0, **kw) == 0.0
    assert warmup_cosine(50, **kw) == pytest.approx(5e-4)
    assert warmup_cosine(100, **kw) == pytest.approx(1e-3)
    assert warmup_cosine(550, **kw) == pytest.approx((1e-3 + 1e-5) / 2)      # half way: cos = 0
    assert warmup_cosine(1000, **kw) == pytest.approx(1e-5)
    assert warmup_cosine(5000, **kw) == pytest.approx(1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 50), st.integers(1, 200), st.integers(0, 300))
def test_warmup_cosine_rises_then_never_increases(warmup, extra, step):
    total = warmup + extra
    lr = lambda s: warmup_cosine(s, 1.0, warmup, total, min_lr=0.1)  # noqa: E731
    assert 0.0 <= lr(step) <= 1.0
    if step >= warmup:
        assert lr(step + 1) <= lr(step) + 1e-15
        assert lr(step) >= 0.1 - 1e-15
    else:
        assert lr(step + 1) > lr(step)
    assert math.isclose(lr(warmup), 1.0)


def test_warmup_cosine_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps=10, total_steps=5"):
        warmup_cosine(0, 1e-3, 10, 5)


def _adamw_steps(fused, monkeypatch, steps=4):
    """Two parameters trained by AdamW for a few steps, gradients added by backward's accumulate;
    with ``fused``, NumPy arrays take the GPU branch and the fused update is NumPy arithmetic."""
    from minidiff.nn.fast import kernels
    calls = []

    def numpy_adamw(theta, g, m, v, lr, weight_decay, betas, eps, bias_correction1, bias_correction2):
        calls.append(theta.size)
        theta *= 1 - lr * weight_decay
        m[...] = betas[0] * m + (1 - betas[0]) * g
        v[...] = betas[1] * v + (1 - betas[1]) * g * g
        theta -= lr / bias_correction1 * m / (np.sqrt(v) / math.sqrt(bias_correction2) + eps)
    monkeypatch.setattr(kernels, "adamw_update", numpy_adamw)
    monkeypatch.setattr(backend, "use_fused", lambda x: fused and isinstance(x, np.ndarray))
    rng = np.random.default_rng(0)
    params = [Parameter(rng.standard_normal((4, 3))), Parameter(rng.standard_normal(3))]
    opt = AdamW(params, lr=0.05, weight_decay=0.1)
    for step in range(steps):
        opt.zero_grad()
        for p in params:
            p.accumulate(rng.standard_normal(p.shape))
            p.accumulate(np.ones(p.shape))                       # a second use adds up
        opt.step()
    return params, opt, calls


def test_flat_adamw_updates_every_parameter_in_one_call_with_the_same_result(monkeypatch):
    params, opt, calls = _adamw_steps(True, monkeypatch)
    # step 1 finds the gradients outside the flat buffer (per parameter: 2 calls); then one call a step
    assert calls == [12, 3, 15, 15, 15]
    flat = params[0].data.base
    assert flat is not None and params[1].data.base is flat and opt.exp_avg["1"].base is not None
    reference, reference_opt, _ = _adamw_steps(False, monkeypatch)
    for p, q in zip(params, reference):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-12)
    for name in ("0", "1"):
        np.testing.assert_allclose(opt.exp_avg_sq[name], reference_opt.exp_avg_sq[name], rtol=1e-12)


def test_flat_adamw_takes_back_a_parameter_replaced_from_outside(monkeypatch):
    params, opt, calls = _adamw_steps(True, monkeypatch, steps=2)
    params[1].data = np.full(3, 7.0)                              # e.g. load_state_dict
    opt.zero_grad()
    for p in params:
        p.accumulate(np.zeros(p.shape))
    opt.step()
    assert calls[-1] == 15 and params[1].data.base is params[0].data.base
    np.testing.assert_allclose(params[1].data, 7.0 * (1 - 0.05 * 0.1) - 0.05 * opt.exp_avg["1"] / (1 - 0.9 ** 3)
                               / (np.sqrt(opt.exp_avg_sq["1"] / (1 - 0.999 ** 3)) + 1e-8), rtol=1e-12)


def _averaged_and_clipped(fused, monkeypatch):
    """Three AdamW steps, two EMA updates (the weights moved in between), then gradient clipping."""
    params, _, _ = _adamw_steps(fused, monkeypatch, steps=3)
    ema = EMA(params, decay=0.9)
    ema.update()
    for p in params:
        p.data += 1.0
    ema.update()
    return params, ema, clip_grad_norm(params, max_norm=0.5)


@pytest.mark.parametrize("fused", [True, False])
def test_ema_and_clipping_give_the_same_numbers_on_flat_buffers(fused, monkeypatch):
    # after a fused AdamW step the parameters and gradients are views of flat buffers, which EMA
    # and clip_grad_norm then treat as one array each; the results must not change
    params, ema, norm = _averaged_and_clipped(fused, monkeypatch)
    if fused:
        assert ema.shadow["0"].base is not None and ema.shadow["0"].base is ema.shadow["1"].base
        assert params[0].grad.base is params[1].grad.base
    reference, reference_ema, reference_norm = _averaged_and_clipped(False, monkeypatch)
    assert float(norm) == pytest.approx(float(reference_norm), rel=1e-12)
    for name, p, q in zip(("0", "1"), params, reference):
        np.testing.assert_allclose(ema.shadow[name], reference_ema.shadow[name], rtol=1e-12)
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12)
    assert np.sqrt(sum(float(np.sum(p.grad ** 2)) for p in params)) == pytest.approx(0.5, rel=1e-5)
