r"""Lesson 02: the reverse process — the posterior, the ELBO and L_simple, and sampling with a perfect denoiser.

Lesson 01 noised data with q(x_t | x_{t-1}). To generate, we run the chain backwards from
x_{T-1} ~ N(0, I). The true reverse step q(x_{t-1} | x_t) needs the whole data distribution, but
with x_0 known it is a Gaussian we can write down (Bayes: q(x_{t-1}|x_t,x_0) is proportional to
q(x_t|x_{t-1}) q(x_{t-1}|x_0), a product of two Gaussians in x_{t-1}):

    q(x_{t-1} | x_t, x_0) = N(mu_t, sigma_t^2 I)
    mu_t      = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0  +  sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t)                    ("fixed_small"; beta_t is "fixed_large")

The ELBO and L_simple
---------------------
A model p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) is fitted by maximising the evidence
lower bound, log p(x_0) >= E_q[log p(x_0|x_1)] - sum_t KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) - KL(q(x_T|x_0) || N(0,I)).
Each KL between Gaussians of equal variance is |mu_t - mu_theta|^2 / (2 sigma_t^2) + const. Substituting
x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) gives mu_t = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t);
choosing mu_theta of the same form with eps_theta(x_t, t) in place of eps turns each term into

    beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) |eps - eps_theta(x_t, t)|^2 = beta_t / (2 alpha_t (1 - abar_{t-1})) |eps - eps_theta|^2.

That weight is largest by far at small t (about 100x more at t = 1 than at t = 500 for the linear
schedule). Ho et al. dropped it, and train with

    L_simple = E_{t ~ U, x_0, eps} |eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)|^2,

which spends the model's effort on the noisier, harder timesteps. The minimiser of L_simple is
the conditional mean eps*(x_t, t) = E[eps | x_t], and by Tweedie's formula
E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t): a perfectly trained network knows the score.

A perfect denoiser
------------------
For data from a Gaussian mixture, p(x_0) = sum_k w_k N(mu_k, s_k^2 I), every q(x_t) is again a
mixture, q(x_t) = sum_k w_k N(sqrt(abar_t) mu_k, (abar_t s_k^2 + 1 - abar_t) I), so eps* is exact:

    eps*(x_t, t) = sqrt(1 - abar_t) sum_k r_k(x_t) (x_t - sqrt(abar_t) mu_k) / (abar_t s_k^2 + 1 - abar_t),

with r_k(x_t) the responsibility of component k for x_t. Plugging eps* into DDPM (ancestral, every
step) and DDIM (deterministic, 50 steps) shows the samplers themselves are right: they recover the
data distribution, its moments and its mixture weights, with no network in the way.

Read beside: minidiff/diffusion/schedule.py (posterior, predict_x0; the module docstring has the
derivations), minidiff/diffusion/samplers.py (ddpm_step, ddim_step, sample), minidiff/diffusion/loss.py.

Run: python lessons/02_reverse_process.py [--quick] [--smoke] [--device cpu|gpu]
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

# %% settings
import dataclasses

import numpy as np

from minidiff import backend
from minidiff.diffusion import samplers
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.utils import output_dir, parse_lesson_args, pyplot, save_figure


@dataclasses.dataclass
class Settings:
    num_samples: int = 8000      # points drawn by each sampler
    ddpm_steps: int = 1000       # ancestral sampling: every step
    ddim_steps: int = 50
    mean_tol: float = 0.05       # |sample mean - true mean|, per coordinate
    cov_tol: float = 0.06        # |sample covariance - true covariance|, per entry
    weight_tol: float = 0.025    # |fraction in component k - w_k|
    spread_tol: float = 0.12     # |std in component k / s_k - 1|
    tweedie_pairs: int = 400000  # (x_0, x_t) pairs for the Monte-Carlo E[x_0 | x_t] of Gaussian data
    tweedie_queries: int = 200   # x_t points where the mixture's E[x_0 | x_t] is estimated
    tweedie_data: int = 20000    # data points the importance-weighted estimate averages over


FULL = Settings()
QUICK = Settings(num_samples=4000, weight_tol=0.03, cov_tol=0.08)
SMOKE = Settings(num_samples=400, ddpm_steps=100, ddim_steps=20, mean_tol=0.2, cov_tol=0.3, weight_tol=0.1,
                 spread_tol=0.4, tweedie_pairs=40000, tweedie_queries=40, tweedie_data=4000)

args = parse_lesson_args('Lesson 02: the reverse process — the posterior, the ELBO and L_simple, and sampling with a perfect denoiser.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out_dir = output_dir("02_reverse_process", args.out)
xp = backend.get_xp()
plt = pyplot()
schedule = NoiseSchedule.make("linear", 1000)
T = schedule.num_steps

# %% 1. the posterior q(x_{t-1} | x_t, x_0): its mean coefficients and its variance against t
t_all = np.arange(1, T)
coef_x0 = schedule.posterior_mean_coef_x0[t_all]          # sqrt(abar_{t-1}) beta_t / (1 - abar_t)
coef_xt = schedule.posterior_mean_coef_xt[t_all]          # sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
fixed_small = schedule.posterior_variance[t_all]          # beta_t (1 - abar_{t-1}) / (1 - abar_t)
fixed_large = schedule.betas[t_all]                       # beta_t
elbo_weight = schedule.betas[t_all] / (2 * schedule.alphas[t_all] * (1 - schedule.alphas_cumprod[t_all - 1]))

print(f"{'t':>5} {'coef x_0':>9} {'coef x_t':>9} {'fixed_small':>12} {'fixed_large':>12} {'small/large':>12} "
      f"{'ELBO weight':>12}")
for t in (1, 10, 100, 500, 999):
    i = t - 1
    print(f"{t:5d} {coef_x0[i]:9.4f} {coef_xt[i]:9.4f} {fixed_small[i]:12.3e} {fixed_large[i]:12.3e} "
          f"{fixed_small[i] / fixed_large[i]:12.3f} {elbo_weight[i]:12.3e}")
# a noiseless x_t = sqrt(abar_t) x_0 must step back to sqrt(abar_{t-1}) x_0
consistency = np.abs(coef_x0 + coef_xt * np.sqrt(schedule.alphas_cumprod[t_all])
                     - np.sqrt(schedule.alphas_cumprod[t_all - 1])).max()
print(f"mean of the posterior at x_t = sqrt(abar_t) x_0 is sqrt(abar_(t-1)) x_0: max error {consistency:.1e}")
assert consistency < 1e-12
assert np.all(fixed_small <= fixed_large) and fixed_small[-1] / fixed_large[-1] > 0.999, \
    "fixed_small is below beta_t and meets it at large t (where abar_{t-1} ~ abar_t ~ 0)"
print(f"the ELBO weights t=1 {elbo_weight[0] / elbo_weight[499]:.0f}x more than t=500; L_simple weighs all t equally")
assert elbo_weight[0] > 100 * elbo_weight[499]

# Bayes by brute force: multiply the two Gaussians on a grid (1-D) and compare with the formula
x0_value, xt_value = 0.8, -0.3
grid = np.linspace(-6, 6, 200001)
for t in (10, 500):
    alpha, abar_prev = schedule.alphas[t], schedule.alphas_cumprod[t - 1]
    log_density = (-(xt_value - np.sqrt(alpha) * grid) ** 2 / (2 * (1 - alpha))                 # q(x_t | x_{t-1})
                   - (grid - np.sqrt(abar_prev) * x0_value) ** 2 / (2 * (1 - abar_prev)))      # q(x_{t-1} | x_0)
    density = np.exp(log_density - log_density.max())
    density /= density.sum()
    mean_grid = (grid * density).sum()
    var_grid = ((grid - mean_grid) ** 2 * density).sum()
    mean, variance, _ = schedule.posterior(np.array([x0_value]), np.array([xt_value]), t)
    print(f"t={t}: grid product mean {mean_grid:.6f} var {var_grid:.3e}; formula mean {mean[0]:.6f} var {variance:.3e}")
    assert abs(mean_grid - mean[0]) < 1e-6 and abs(var_grid / variance - 1) < 1e-3

fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
# every panel has a log t axis: the posterior changes fastest at small t, where a linear axis squeezes it
axes[0].semilogx(t_all, coef_x0, label="coefficient a of x_0")
axes[0].semilogx(t_all, coef_xt, label="coefficient b of x_t")
axes[0].set(title="posterior mean = a x_0 + b x_t:\nthe pull a toward x_0 grows as t -> 0",
            xlabel="timestep t (log scale)",
            ylabel="coefficient")
axes[1].loglog(t_all, fixed_small, label="fixed_small: beta_t (1-abar_(t-1)) / (1-abar_t)")
axes[1].loglog(t_all, fixed_large, "--", label="fixed_large: beta_t")
axes[1].set(title="reverse-step variance:\nthe two choices differ only at small t", xlabel="timestep t (log scale)",
            ylabel="variance (log scale)")
axes[2].loglog(t_all, elbo_weight)
axes[2].set(title="ELBO weight on |eps - eps_theta|^2:\n~100x larger at t = 1 than at t = 500 (L_simple uses 1)",
            xlabel="timestep t (log scale)",
            ylabel="beta_t / (2 alpha_t (1 - abar_(t-1)))")
for ax in axes:
    ax.grid(True, which="major", alpha=0.3)
axes[0].legend(), axes[1].legend(fontsize=8)
save_figure(fig, out_dir / "posterior.png")

# %% 2. a 2-D Gaussian mixture and its exact noise predictor
weights = np.array([0.5, 0.3, 0.2])                       # w_k
means = np.array([[-1.2, -0.7], [1.2, -0.7], [0.0, 1.1]])  # mu_k
stds = np.array([0.25, 0.2, 0.35])                        # s_k (isotropic)
K = len(weights)


def responsibilities(x, scale, variances):
    """r_k(x) for the mixture sum_k w_k N(scale mu_k, variances_k I); x (N, 2), scale (N, 1), variances (N, K)."""
    w, mu = xp.asarray(weights), xp.asarray(means)
    squared = ((x[:, None, :] - scale[:, :, None] * mu[None]) ** 2).sum(axis=-1)          # (N, K)
    log_p = xp.log(w)[None] - squared / (2 * variances) - xp.log(variances)               # 2-D: log of 1/var
    log_p -= log_p.max(axis=1, keepdims=True)                                              # stable softmax
    p = xp.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


def exact_eps(x, t):
    """eps*(x_t, t) = sqrt(1 - abar_t) sum_k r_k (x_t - sqrt(abar_t) mu_k) / (abar_t s_k^2 + 1 - abar_t)."""
    a = schedule.gather("sqrt_alphas_cumprod", t, x)                                       # (N, 1)
    b = schedule.gather("sqrt_one_minus_alphas_cumprod", t, x)                             # (N, 1)
    variances = a ** 2 * xp.asarray(stds, dtype=x.dtype) ** 2 + b ** 2                     # (N, K)
    r = responsibilities(x, a, variances)                                                  # (N, K)
    offsets = x[:, None, :] - a[:, :, None] * xp.asarray(means, dtype=x.dtype)[None]       # (N, K, 2)
    return b * (r[:, :, None] * offsets / variances[:, :, None]).sum(axis=1)               # (N, 2)


def sample_data(n, rng):
    component = np.searchsorted(np.cumsum(weights), backend.to_numpy(rng.random(n)))
    noise = backend.to_numpy(rng.standard_normal((n, 2)))
    return (means[component] + stds[component, None] * noise).astype(np.float32)


rng = backend.rng(args.seed)
data = sample_data(settings.num_samples, rng)
true_mean = weights @ means
true_cov = sum(w * (s ** 2 * np.eye(2) + np.outer(m, m)) for w, m, s in zip(weights, means, stds)) - np.outer(
    true_mean, true_mean)

# eps* minimises L_simple: scaling it up or down, or ignoring the mixture, only raises the loss
x0 = xp.asarray(data)
for t in (50, 300, 700):
    t_batch = xp.full((len(data),), t, dtype=xp.int64)
    eps = rng.standard_normal(x0.shape, dtype=np.float32)
    xt = schedule.q_sample(x0, t_batch, eps)
    best = exact_eps(xt, t_batch)
    losses = {name: float(((eps - guess) ** 2).mean()) for name, guess in (
        ("exact eps*", best), ("0.8 eps*", 0.8 * best), ("1.2 eps*", 1.2 * best),
        ("x_t * sqrt(1-abar)", xt * schedule.sqrt_one_minus_alphas_cumprod[t]))}
    print(f"t={t}: L_simple " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    assert losses["exact eps*"] == min(losses.values()), "the exact conditional mean has the lowest L_simple"

# %% 3. Tweedie's formula, checked: E[x_0 | x_t] = (x_t + (1 - abar_t) score(x_t)) / sqrt(abar_t)
# The score is grad log q(x_t), and eps* = -sqrt(1 - abar_t) score, so Tweedie's denoised guess is exactly what
# predict_x0(x_t, t, eps*) computes. Two checks that do not use the formula itself:
#   (a) Gaussian data x_0 ~ N(mu, s^2): q(x_t) = N(sqrt(abar) mu, abar s^2 + 1 - abar), so the score is known, and
#       (x_0, x_t) are jointly Gaussian:
#       E[x_0 | x_t] = mu + sqrt(abar) s^2 / (abar s^2 + 1 - abar) (x_t - sqrt(abar) mu).
#       A Monte-Carlo estimate bins many (x_0, x_t) pairs by x_t and averages x_0 in each bin.
#   (b) the mixture: Bayes with data samples, E[x_0 | x_t] ~ sum_i w_i x_0^(i) / sum_i w_i with
#       w_i = q(x_t | x_0^(i)) = N(x_t; sqrt(abar) x_0^(i), 1 - abar) (self-normalised importance sampling).
gauss_mu, gauss_s = 0.7, 0.4
tweedie_t = (10, 100, 500)
host_rng = np.random.default_rng(args.seed + 3)
gaussian_curves, worst_gauss_z, worst_formula = {}, 0.0, 0.0
for t in tweedie_t:
    a, b = np.sqrt(schedule.alphas_cumprod[t]), np.sqrt(1 - schedule.alphas_cumprod[t])
    var_t = a ** 2 * gauss_s ** 2 + b ** 2                                          # Var(x_t)
    x0_pairs = gauss_mu + gauss_s * host_rng.standard_normal(settings.tweedie_pairs)
    xt_pairs = a * x0_pairs + b * host_rng.standard_normal(settings.tweedie_pairs)  # q(x_t | x_0)
    edges = np.quantile(xt_pairs, np.linspace(0.02, 0.98, 31))                      # 30 bins, equal counts
    which = np.digitize(xt_pairs, edges) - 1
    inside = (which >= 0) & (which < 30)
    count = np.bincount(which[inside], minlength=30)
    xt_bin = np.bincount(which[inside], xt_pairs[inside], minlength=30) / count      # mean x_t in each bin
    x0_bin = np.bincount(which[inside], x0_pairs[inside], minlength=30) / count      # Monte Carlo E[x_0 | bin]

    def score(x):
        return -(x - a * gauss_mu) / var_t                                          # grad log N(x; a mu, var_t)

    tweedie = (xt_bin + b ** 2 * score(xt_bin)) / a
    closed = gauss_mu + a * gauss_s ** 2 / var_t * (xt_bin - a * gauss_mu)
    # E[x_0 | x_t] is linear in x_t here, so averaging it over a bin is the same as evaluating it at the bin's mean
    standard_error = np.sqrt(gauss_s ** 2 * b ** 2 / var_t / count)                # sqrt(Var(x_0 | x_t) / n)
    worst_gauss_z = max(worst_gauss_z, float(np.abs(x0_bin - tweedie).max() / standard_error.min()))
    worst_formula = max(worst_formula, float(np.abs(tweedie - closed).max()))
    gaussian_curves[t] = (xt_bin, x0_bin, tweedie)
print(f"(a) Gaussian data N({gauss_mu}, {gauss_s}^2), t in {tweedie_t}: Tweedie vs closed-form posterior mean, "
      f"max |diff| {worst_formula:.1e}; vs Monte Carlo ({settings.tweedie_pairs} pairs, 30 bins): "
      f"worst {worst_gauss_z:.2f} standard errors")
assert worst_formula < 1e-12 and worst_gauss_z < 5, "Tweedie's formula must give the posterior mean of Gaussian data"

mixture_checks, worst_mixture = {}, 0.0
pool = sample_data(settings.tweedie_data, rng).astype(np.float64)                  # x_0^(i) for the weights
for t in (50, 200, 500):
    a, b = np.sqrt(schedule.alphas_cumprod[t]), np.sqrt(1 - schedule.alphas_cumprod[t])
    queries = a * sample_data(settings.tweedie_queries, rng) + b * host_rng.standard_normal(
        (settings.tweedie_queries, 2))                                              # x_t from the true q(x_t)
    t_batch = xp.full((len(queries),), t, dtype=xp.int64)
    xt_device = xp.asarray(queries, dtype=np.float64)
    tweedie = backend.to_numpy(schedule.predict_x0(xt_device, t_batch, exact_eps(xt_device, t_batch)))
    squared = ((queries[:, None, :] - a * pool[None]) ** 2).sum(-1)                  # |x_t - sqrt(abar) x_0^(i)|^2
    log_w = -squared / (2 * b ** 2)
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    monte_carlo = w @ pool                                                          # (queries, 2)
    # the estimate's standard error, sqrt(sum_i w_i^2 (x_0^(i) - estimate)^2) (the delta method for a weighted mean)
    standard_error = np.sqrt(np.einsum("qi,qid->qd", w ** 2, (pool[None] - monte_carlo[:, None]) ** 2))
    z = float((np.abs(tweedie - monte_carlo) / standard_error).max())
    worst_mixture = max(worst_mixture, z)
    mixture_checks[t] = (queries, tweedie, monte_carlo)
    print(f"(b) mixture, t={t}: Tweedie (from eps*) vs importance-weighted Bayes over {len(pool)} data points: "
          f"max |diff| {np.abs(tweedie - monte_carlo).max():.4f} = {z:.2f} standard errors "
          f"(median effective sample size {np.median(1 / (w ** 2).sum(axis=1)):.0f})")
print(f"worst: {worst_mixture:.2f} standard errors over {3 * settings.tweedie_queries} points x 2 coordinates "
      "(limit 5)")
assert worst_mixture < 5, "Tweedie's E[x_0 | x_t] from the exact score must match Bayes computed with data samples"

fig, axes = plt.subplots(1, 4, figsize=(18, 4.4), constrained_layout=True)
for t, colour in zip(tweedie_t, ("tab:blue", "tab:orange", "tab:green")):
    xt_bin, x0_bin, tweedie = gaussian_curves[t]
    axes[0].plot(xt_bin, tweedie, color=colour, lw=1.5, label=f"t={t}: Tweedie from the score")
    axes[0].plot(xt_bin, x0_bin, "o", color=colour, ms=3.5, label=f"t={t}: Monte Carlo, mean x_0 per x_t bin")
axes[0].axhline(gauss_mu, color="k", lw=0.6, ls=":")
axes[0].set(title=f"Gaussian data N({gauss_mu}, {gauss_s}^2): E[x_0 | x_t]", xlabel="x_t", ylabel="E[x_0 | x_t]")
axes[0].legend(fontsize=7)
for ax, (t, (queries, tweedie, monte_carlo)) in zip(axes[1:], mixture_checks.items()):
    shown = slice(0, 40)
    ax.scatter(data[:2000, 0], data[:2000, 1], s=1, c="lightgray", label="data x_0")
    ax.quiver(queries[shown, 0], queries[shown, 1], *(tweedie[shown] - queries[shown]).T, angles="xy",
              scale_units="xy", scale=1, width=0.004, color="tab:blue", alpha=0.7, label="x_t -> Tweedie's E[x_0|x_t]")
    ax.scatter(monte_carlo[shown, 0], monte_carlo[shown, 1], marker="x", s=18, c="tab:red",
               label="Bayes with data samples")
    ax.set(title=f"mixture, t = {t}: the denoised guess", xlabel="x[0]", ylabel="x[1]", xlim=(-3, 3), ylim=(-3, 3),
           aspect="equal")
axes[1].legend(fontsize=7, loc="lower left")
fig.suptitle("Tweedie's formula E[x_0|x_t] = (x_t + (1-abar_t) score(x_t)) / sqrt(abar_t), checked against "
             "Monte Carlo (dots, crosses)")
save_figure(fig, out_dir / "tweedie.png")

# %% 4. DDPM and DDIM with the exact denoiser recover the data
runs = {
    f"DDPM, {settings.ddpm_steps} steps (fixed_small)": dict(sampler="ddpm", steps=settings.ddpm_steps),
    f"DDPM, {settings.ddpm_steps} steps (fixed_large)": dict(sampler="ddpm", steps=settings.ddpm_steps,
                                                            variance_type="fixed_large"),
    f"DDIM, {settings.ddim_steps} steps (eta = 0)": dict(sampler="ddim", steps=settings.ddim_steps),
}
results = {}
for label, kwargs in runs.items():
    x, xs, _ = samplers.sample(exact_eps, schedule, (settings.num_samples, 2), rng=backend.rng(args.seed + 1),
                               return_intermediates=True, progress=False, **kwargs)
    results[label] = (backend.to_numpy(x), [backend.to_numpy(step) for step in xs])


def assign(points):
    """Index of the component each point most likely came from (responsibilities under the data distribution)."""
    points = xp.asarray(points)
    ones = xp.ones((len(points), 1), dtype=points.dtype)
    variances = xp.broadcast_to(xp.asarray(stds, dtype=points.dtype) ** 2, (len(points), K))
    return backend.to_numpy(responsibilities(points, ones, variances).argmax(axis=1))


print(f"true: mean {np.round(true_mean, 3)}, covariance {np.round(true_cov, 3).tolist()}, weights {weights}, "
      f"stds {stds}")
for label, (x, _) in [("data (a fresh draw)", (data, None))] + list(results.items()):
    component = assign(x)
    fractions = np.bincount(component, minlength=K) / len(x)
    spreads = np.array([x[component == k].std(axis=0).mean() for k in range(K)])
    mean_error = np.abs(x.mean(axis=0) - true_mean).max()
    cov_error = np.abs(np.cov(x.T) - true_cov).max()
    print(f"{label:>34}: |mean err| {mean_error:.3f}  |cov err| {cov_error:.3f}  weights {np.round(fractions, 3)}  "
          f"stds {np.round(spreads, 3)}")
    assert mean_error < settings.mean_tol, f"{label}: mean off by {mean_error:.3f}"
    assert cov_error < settings.cov_tol, f"{label}: covariance off by {cov_error:.3f}"
    assert np.abs(fractions - weights).max() < settings.weight_tol, f"{label}: weights {fractions}"
    # points assigned by argmax are slightly tighter than the component itself; the tolerance allows for it
    assert np.abs(spreads / stds - 1).max() < settings.spread_tol, f"{label}: spreads {spreads}"

# %% 5. pictures: samples, marginals, trajectories
panels = [("data", data)] + [(label, x) for label, (x, _) in results.items()]
fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), constrained_layout=True)
for ax, (label, x) in zip(axes, panels):
    fractions = np.bincount(assign(x), minlength=K) / len(x)
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    ax.scatter(means[:, 0], means[:, 1], marker="x", c="k", s=40)
    ax.set(title=f"{label}\nweights {np.round(fractions, 2).tolist()}", xlabel="x[0]", ylabel="x[1]",
           xlim=(-2.5, 2.5), ylim=(-2, 2.3), aspect="equal")
    ax.title.set_fontsize(9)
fig.suptitle(f"Exact noise predictor: samplers recover the mixture (true weights {weights.tolist()})")
save_figure(fig, out_dir / "mixture_samples.png")

fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
for dim, ax in enumerate(axes):
    line = np.linspace(-2.8, 2.8, 400)
    density = sum(w * np.exp(-(line - m[dim]) ** 2 / (2 * s ** 2)) / np.sqrt(2 * np.pi * s ** 2)
                  for w, m, s in zip(weights, means, stds))
    ax.plot(line, density, "k", lw=2, label="true marginal")
    for label, (x, _) in results.items():
        ax.hist(x[:, dim], bins=80, range=(-2.8, 2.8), density=True, histtype="step", label=label)
    ax.set(title=f"marginal of x[{dim}]", xlabel=f"x[{dim}]", ylabel="density")
axes[0].legend(fontsize=8)
save_figure(fig, out_dir / "marginals.png")

label = next(k for k in results if k.startswith("DDIM"))
path = np.stack(results[label][1])[:, :40]                # (steps, 40 points, 2)
fig, ax = plt.subplots(figsize=(5.5, 5))
for i in range(path.shape[1]):
    ax.plot(path[:, i, 0], path[:, i, 1], lw=0.7, alpha=0.7)
ax.scatter(path[0, :, 0], path[0, :, 1], s=8, c="grey", label="after the first step (near noise)")
ax.scatter(path[-1, :, 0], path[-1, :, 1], s=10, c="k", label="x_0")
ax.set(title=f"{label}: 40 trajectories from noise to the modes", xlabel="x[0]", ylabel="x[1]", aspect="equal")
ax.legend(fontsize=8)
save_figure(fig, out_dir / "ddim_trajectories.png")
print("done: with the exact eps*, ancestral DDPM and deterministic DDIM both land on the data distribution.")

# %% Exercises
# Run one with MINIDIFF_EXERCISE=N python lessons/02_reverse_process.py --quick (several: MINIDIFF_EXERCISE=1,3;
# in a notebook: set EXERCISE below).
# Each fills in or guesses something here first; the lesson then checks it.
#
#   1. Write the posterior mean yourself. Fill in my_posterior_mean(x0, xt, t) from the formula in the docstring
#      (use schedule.betas, schedule.alphas, schedule.alphas_cumprod). The lesson compares it with
#      schedule.posterior at random points and timesteps.
#   2. An under-confident denoiser. Replace eps* by 0.9 eps* (it removes only 90% of the noise it sees). Before
#      running, predict: are DDIM's mixture components "wider" or "narrower" than the data's? Set
#      MY_SPREAD_GUESS, then run; the lesson measures the spread of each component.
#   3. How few steps does a perfect denoiser need? Guess the smallest DDIM step count in STEP_CHOICES whose samples
#      still match the data's covariance within cov_tol (section 4's test). Set MY_STEPS_GUESS; the lesson sweeps.
import os

EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
MY_SPREAD_GUESS = None          # exercise 2: "wider" or "narrower"
STEP_CHOICES = (2, 5, 10, 20, 50)
MY_STEPS_GUESS = None           # exercise 3: one of STEP_CHOICES


def my_posterior_mean(x0, xt, t):
    """Exercise 1: mu_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
                        + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t."""
    return None                 # replace with your formula


def component_spreads(points):
    """Std of each mixture component's points, over the true s_k (1 = right)."""
    component = assign(points)
    return np.array([points[component == k].std(axis=0).mean() for k in range(K)]) / stds


def ddim_samples(eps_fn, steps):
    x = samplers.sample(eps_fn, schedule, (settings.num_samples, 2), sampler="ddim", steps=steps,
                        rng=backend.rng(args.seed + 1), progress=False)
    return backend.to_numpy(x)


if "1" in EXERCISE.split(","):
    check_rng = np.random.default_rng(args.seed + 4)
    x0_check, xt_check = check_rng.standard_normal(16), check_rng.standard_normal(16)
    for t in (1, 10, 500, 999):
        mine = my_posterior_mean(x0_check, xt_check, t)
        if mine is None:
            print("exercise 1: fill in my_posterior_mean first")
            break
        error = np.abs(np.asarray(mine) - schedule.posterior(x0_check, xt_check, t)[0]).max()
        print(f"exercise 1: t={t}: max |yours - schedule.posterior| = {error:.1e}")
        assert error < 1e-10, f"exercise 1: not yet; at t={t} your mean is off by {error:.3e}"
    else:
        print("exercise 1: correct at every t")
if "2" in EXERCISE.split(","):
    spreads = component_spreads(ddim_samples(lambda x, t: 0.9 * exact_eps(x, t), settings.ddim_steps))
    answer = "wider" if spreads.mean() > 1 else "narrower"
    print(f"exercise 2: with 0.9 eps* the components' spread / true spread = {np.round(spreads, 2)}: {answer}")
    print(f"  your guess: {MY_SPREAD_GUESS}" + ("" if MY_SPREAD_GUESS is None else
                                                 ("  right" if MY_SPREAD_GUESS == answer else "  not this time")))
    print("  why: x0_hat = (x_t - sqrt(1-abar) 0.9 eps*) / sqrt(abar) keeps 10% of the noise at every step")
if "3" in EXERCISE.split(","):
    true_cov_errors = {steps: float(np.abs(np.cov(ddim_samples(exact_eps, steps).T) - true_cov).max())
                       for steps in STEP_CHOICES}
    fewest = min(steps for steps, error in true_cov_errors.items() if error < settings.cov_tol)
    print("exercise 3: DDIM with eps*, max |cov error| by steps: "
          + ", ".join(f"{k}: {v:.3f}" for k, v in true_cov_errors.items()) + f" (tolerance {settings.cov_tol})")
    print(f"  fewest steps within tolerance: {fewest}; your guess: {MY_STEPS_GUESS}")
    assert MY_STEPS_GUESS in (None, fewest), f"exercise 3: not this time, {fewest} steps is the fewest"
