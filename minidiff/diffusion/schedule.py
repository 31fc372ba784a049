r"""The noise schedule: how much signal survives after t noising steps, and the algebra around it.

Notation (as in the DDPM paper and the explainers): x_0 is a data sample, eps ~ N(0, I) is noise,
beta_t is the variance of the noise added at step t, alpha_t = 1 - beta_t, and
abar_t = prod_{s<=t} alpha_s ("alpha bar"). Arrays are 0-based: array index t is the paper's step
t+1, and T = num_steps.

Forward process
---------------
One step mixes a little noise into the previous sample, shrinking it so the variance stays 1:

    q(x_t | x_{t-1}) = N(x_t; sqrt(alpha_t) x_{t-1}, beta_t I)
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps_t

Composing two steps: x_t = sqrt(alpha_t alpha_{t-1}) x_{t-2} + sqrt(alpha_t beta_{t-1}) eps' +
sqrt(beta_t) eps''. The two noises are independent Gaussians, so their sum is one Gaussian with
variance alpha_t (1 - alpha_{t-1}) + 1 - alpha_t = 1 - alpha_t alpha_{t-1}. By induction every step
collapses into one (the "closed form", so training never has to iterate):

    q(x_t | x_0) = N(x_t; sqrt(abar_t) x_0, (1 - abar_t) I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                                  (q_sample)

The signal-to-noise ratio SNR(t) = abar_t / (1 - abar_t) falls from large to ~0 as t -> T.

Posterior
---------
Reversing one step is intractable without x_0, but with x_0 known Bayes' rule gives a Gaussian:
q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0). Both factors are
Gaussian in x_{t-1}; adding their precisions and precision-weighted means,

    1 / var = alpha_t / beta_t + 1 / (1 - abar_{t-1})  =>  var = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    mean    = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t

(with abar_{-1} = 1: at the last reverse step the posterior is a point mass at x_0).

L_simple
--------
A network p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) is trained by the variational bound;
its per-step terms are KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) = |mean - mu_theta|^2 / (2 sigma_t^2)
+ const. Writing x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) in the posterior mean gives

    mean = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)

so if mu_theta has the same form with eps replaced by eps_theta(x_t, t), the KL term becomes
beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) |eps - eps_theta|^2. Dropping that weight (Ho et al.
found it trains better) leaves the loss every diffusion model here uses:

    L_simple = E_{x_0, t, eps} |eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)|^2

The same network can instead predict x_0 ("sample") or the velocity
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 ("v_prediction"); the methods below convert between
the three (see minidiff/diffusion/loss.py for the objectives).

Arrays, devices and dtypes
--------------------------
The schedule tables are float64 NumPy arrays (schedule algebra in double precision). A method
gets its array module from the data (NumPy or CuPy) and casts every coefficient to the data's
dtype before it touches the data, so a float32 batch stays float32 (NumPy 2 would otherwise
promote it to float64 through a float64 scalar). Timesteps ``t`` come in two forms:

* a Python/NumPy integer (sampling: one t for the whole batch): the coefficient is read on the
  host and passed to the kernel as a scalar of the data's dtype. No device array, no transfer.
* an integer array of shape (B,) (training: one t per sample): the table is copied once per
  (array module, dtype) into a cache and indexed there, so a CuPy ``t`` is gathered on the GPU
  with no host-device synchronisation. The coefficient is reshaped to (B, 1, ..., 1) to broadcast.

Range checks: ints and NumPy arrays are checked (ValueError). A CuPy ``t`` is not, because
reading its min/max would stall the GPU every step; draw it in range (``loss.training_targets``
does).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

SCHEDULES = ("linear", "cosine", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


# ---------------------------------------------------------------------------------------------
# beta schedules (float64 NumPy, length T)
# ---------------------------------------------------------------------------------------------

def linear_betas(num_steps, beta_start=1e-4, beta_end=0.02):
    """DDPM: beta_t evenly spaced from beta_start to beta_end."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def scaled_linear_betas(num_steps, beta_start=0.00085, beta_end=0.012):
    """Stable Diffusion: evenly spaced in sqrt(beta), then squared."""
    # beta_t = (sqrt(b0) + t/(T-1) (sqrt(b1) - sqrt(b0)))^2
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=np.float64) ** 2


def cosine_betas(num_steps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal (2021): abar(tau) = f(tau) / f(0), f(tau) = cos^2((tau + s) / (1 + s) * pi/2).

    beta_t = 1 - abar((t+1)/T) / abar(t/T), clipped at max_beta so the last steps stay finite
    (diffusers' "squaredcos_cap_v2").
    """
    tau = np.arange(num_steps + 1, dtype=np.float64) / num_steps           # 0, 1/T, ..., 1
    f = np.cos((tau + s) / (1 + s) * math.pi / 2) ** 2                     # f(0) cancels in the ratio
    return np.minimum(1 - f[1:] / f[:-1], max_beta)


def rescale_betas_zero_terminal_snr(betas):
    """Lin et al. (2023), Algorithm 1: shift and scale sqrt(abar) so abar_{T-1} = 0 and abar_0 is kept.

    With abar_{T-1} > 0 the last training step still leaks a little signal, while sampling starts from
    pure noise; after the rescale the model is trained on pure noise at t = T-1 (use v-prediction
    then: eps-prediction cannot recover x_0 when abar = 0).
    """
    sqrt_abar = np.sqrt(np.cumprod(1 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    # sqrt(abar)' = (sqrt(abar) - sqrt(abar_{T-1})) * sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_{T-1}))
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar ** 2
    # alpha_t = abar_t / abar_{t-1}, alpha_0 = abar_0
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


# ---------------------------------------------------------------------------------------------
# x_0 <-> eps <-> v, given the two coefficients a = sqrt(abar_t), b = sqrt(1 - abar_t)
# (the samplers call these with coefficients of their own, e.g. from sigma in DPM-Solver)
# ---------------------------------------------------------------------------------------------

def x0_from_eps(xt, eps, a, b):
    """x_t = a x_0 + b eps  =>  x_0 = (x_t - b eps) / a."""
    return (xt - b * eps) / a


def eps_from_x0(xt, x0, a, b):
    """x_t = a x_0 + b eps  =>  eps = (x_t - a x_0) / b."""
    return (xt - a * x0) / b


def x0_from_v(xt, v, a, b):
    """v = a eps - b x_0 and x_t = a x_0 + b eps (a^2 + b^2 = 1)  =>  x_0 = a x_t - b v."""
    return a * xt - b * v


def eps_from_v(xt, v, a, b):
    """... and eps = a v + b x_t."""
    return a * v + b * xt


def x0_and_eps(model_output, xt, a, b, prediction_type="epsilon"):
    """(x_0, eps) implied by a network output of ``prediction_type`` ("epsilon" | "sample" | "v_prediction")."""
    if prediction_type == "epsilon":
        return x0_from_eps(xt, model_output, a, b), model_output
    if prediction_type == "sample":
        return model_output, eps_from_x0(xt, model_output, a, b)
    if prediction_type == "v_prediction":
        return x0_from_v(xt, model_output, a, b), eps_from_v(xt, model_output, a, b)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


_BETA_FUNCTIONS = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas}
_BETA_KEYWORDS = {"linear": ("beta_start", "beta_end"), "scaled_linear": ("beta_start", "beta_end"),
                  "cosine": ("s", "max_beta")}


# ---------------------------------------------------------------------------------------------
# the schedule
# ---------------------------------------------------------------------------------------------

class NoiseSchedule:
    """betas, alphas, alphas_cumprod (float64, length T) and the closed-form algebra of q.

    Build one with ``NoiseSchedule.make("linear" | "cosine" | "scaled_linear", num_steps)`` or
    from your own betas with ``NoiseSchedule(betas)``.
    """

    def __init__(self, betas, name="custom"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"NoiseSchedule: betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not (np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError(f"NoiseSchedule: betas must lie in (0, 1], got min {betas.min()} max {betas.max()}")
        self.name = name
        self.num_steps = betas.size                                          # T
        self.betas = betas                                                   # beta_t
        self.alphas = 1.0 - betas                                            # alpha_t = 1 - beta_t
        self.alphas_cumprod = np.cumprod(self.alphas)                        # abar_t = prod_{s<=t} alpha_s
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])  # abar_{t-1}, abar_{-1} = 1

        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = np.sqrt(abar)                             # sqrt(abar_t)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)             # sqrt(1 - abar_t)
        with np.errstate(divide="ignore", invalid="ignore"):
            # posterior q(x_{t-1} | x_t, x_0); 1 - abar_t > 0 for every t since beta_0 > 0
            self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)        # beta_t (1-abar_{t-1})/(1-abar_t)
            self.posterior_mean_coef_x0 = np.sqrt(abar_prev) * betas / (1.0 - abar)   # sqrt(abar_{t-1}) beta_t/(1-abar_t)
            self.posterior_mean_coef_xt = np.sqrt(self.alphas) * (1.0 - abar_prev) / (1.0 - abar)
            # the variance is 0 at t=0; the log is clipped to its t=1 value (as in DDPM's code)
            self.posterior_log_variance_clipped = np.log(
                np.concatenate([self.posterior_variance[1:2], self.posterior_variance[1:]])
                if self.num_steps > 1 else np.ones(1))
            self.snr_table = abar / (1.0 - abar)                             # SNR(t) = abar_t / (1 - abar_t)
        self._cache = {}                                                     # (module, dtype, table) -> array

    @classmethod
    def make(cls, name, num_steps=1000, rescale_zero_terminal_snr=False, **kw):
        """A named schedule: "linear" (beta 1e-4..0.02), "cosine" (s=0.008, beta <= 0.999) or
        "scaled_linear" (sqrt-space 0.00085..0.012). Keywords: beta_start/beta_end (linear,
        scaled_linear) or s/max_beta (cosine). ``rescale_zero_terminal_snr`` applies Lin et al. 2023."""
        if name not in _BETA_FUNCTIONS:
            raise ValueError(f"NoiseSchedule.make: unknown schedule name {name!r}; allowed: {SCHEDULES}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"NoiseSchedule.make: num_steps must be an integer >= 1, got {num_steps!r}")
        unknown = sorted(set(kw) - set(_BETA_KEYWORDS[name]))
        if unknown:
            raise ValueError(f"NoiseSchedule.make: schedule {name!r} takes keywords {_BETA_KEYWORDS[name]}, "
                             f"got unknown {unknown}")
        betas = _BETA_FUNCTIONS[name](int(num_steps), **kw)
        if rescale_zero_terminal_snr:
            if num_steps < 2:
                raise ValueError("NoiseSchedule.make: rescale_zero_terminal_snr needs num_steps >= 2, "
                                 f"got {num_steps}")
            betas = rescale_betas_zero_terminal_snr(betas)
        return cls(betas, name=name + ("+zero_snr" if rescale_zero_terminal_snr else ""))

    def __repr__(self):
        return f"NoiseSchedule({self.name!r}, num_steps={self.num_steps})"

    # -----------------------------------------------------------------------------------------
    # reading a coefficient at t, on the data's device and in its dtype
    # -----------------------------------------------------------------------------------------

    def check_timestep(self, t, name="t"):
        """Raise ValueError unless t (int or host int array) lies in [0, T-1]. CuPy arrays pass unchecked."""
        if isinstance(t, (bool, np.bool_)) or isinstance(t, float):
            raise ValueError(f"{name} must be an integer timestep in [0, {self.num_steps - 1}], got {t!r}")
        if isinstance(t, (int, np.integer)):
            if not 0 <= t < self.num_steps:
                raise ValueError(f"{name}={t} is out of range; allowed: 0 <= {name} <= {self.num_steps - 1}")
            return
        if isinstance(t, np.ndarray):
            if not np.issubdtype(t.dtype, np.integer):
                raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
            if t.size and (t.min() < 0 or t.max() >= self.num_steps):
                raise ValueError(f"{name} has values in [{t.min()}, {t.max()}]; allowed: "
                                 f"0 <= {name} <= {self.num_steps - 1}")

    def table(self, name, xp, dtype):
        """The float64 table ``name`` as an ``xp`` array of ``dtype``, copied once and cached."""
        key = (xp.__name__, np.dtype(dtype).str, name)
        if key not in self._cache:
            self._cache[key] = xp.asarray(getattr(self, name), dtype=dtype)
        return self._cache[key]

    def gather(self, name, t, like):
        """Coefficient ``name`` at t, ready to multiply ``like`` (B, ...).

        int t       -> a NumPy scalar of like's dtype (read on the host)
        array t (B,) -> an array of like's module and dtype, shape (B, 1, ..., 1)
        """
        self.check_timestep(t)
        dtype = like.dtype
        if isinstance(t, (int, np.integer)) or getattr(t, "ndim", 1) == 0:
            return dtype.type(getattr(self, name)[int(t)])
        xp = get_array_module(like)
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t must be an int or an int array of shape (B,) = ({like.shape[0]},), "
                             f"got shape {t.shape}")
        coef = self.table(name, xp, dtype)[xp.asarray(t)]                    # (B,) gathered where t lives
        return coef.reshape((-1,) + (1,) * (like.ndim - 1))                   # (B, 1, ..., 1)

    @staticmethod
    def _check_same_shape(a, b, name_a, name_b, method):
        if a.shape != b.shape:
            raise ValueError(f"{method}: {name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
                             "they must be equal")

    # -----------------------------------------------------------------------------------------
    # forward process and posterior
    # -----------------------------------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        """x_t ~ q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        self._check_same_shape(x0, noise, "x0", "noise", "q_sample")
        sqrt_abar, sqrt_one_minus_abar = self._coefficients(t, x0)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        return sqrt_abar * x0 + sqrt_one_minus_abar * noise

    def posterior(self, x0, xt, t):
        """q(x_{t-1} | x_t, x_0) = N(mean, variance): returns (mean, variance, log_variance_clipped).

        variance and log_variance_clipped are coefficients shaped like ``gather`` returns them
        (scalar for int t, (B, 1, ..., 1) for array t).
        """
        self._check_same_shape(x0, xt, "x0", "xt", "posterior")
        # mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        mean = self.gather("posterior_mean_coef_x0", t, x0) * x0 + self.gather("posterior_mean_coef_xt", t, x0) * xt
        # var = beta_t (1 - abar_{t-1}) / (1 - abar_t)
        variance = self.gather("posterior_variance", t, x0)
        log_variance = self.gather("posterior_log_variance_clipped", t, x0)
        return mean, variance, log_variance

    # -----------------------------------------------------------------------------------------
    # converting between x_0, eps and v (all from x_t = sqrt(abar) x_0 + sqrt(1-abar) eps)
    # -----------------------------------------------------------------------------------------

    def _coefficients(self, t, like):
        """(sqrt(abar_t), sqrt(1 - abar_t)) at t, ready to multiply ``like``."""
        return (self.gather("sqrt_alphas_cumprod", t, like),
                self.gather("sqrt_one_minus_alphas_cumprod", t, like))

    def predict_x0(self, xt, t, eps):
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        self._check_same_shape(xt, eps, "xt", "eps", "predict_x0")
        return x0_from_eps(xt, eps, *self._coefficients(t, xt))

    def predict_eps(self, xt, t, x0):
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        self._check_same_shape(xt, x0, "xt", "x0", "predict_eps")
        return eps_from_x0(xt, x0, *self._coefficients(t, xt))

    def velocity(self, x0, eps, t):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022)."""
        self._check_same_shape(x0, eps, "x0", "eps", "velocity")
        sqrt_abar, sqrt_one_minus_abar = self._coefficients(t, x0)
        return sqrt_abar * eps - sqrt_one_minus_abar * x0

    def predict_x0_from_v(self, xt, t, v):
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        self._check_same_shape(xt, v, "xt", "v", "predict_x0_from_v")
        return x0_from_v(xt, v, *self._coefficients(t, xt))

    def predict_eps_from_v(self, xt, t, v):
        """eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
        self._check_same_shape(xt, v, "xt", "v", "predict_eps_from_v")
        return eps_from_v(xt, v, *self._coefficients(t, xt))

    def x0_and_eps(self, model_output, xt, t, prediction_type="epsilon"):
        """(x_0, eps) implied by a network output of ``prediction_type`` at (x_t, t)."""
        self._check_same_shape(xt, model_output, "xt", "model_output", "x0_and_eps")
        return x0_and_eps(model_output, xt, *self._coefficients(t, xt), prediction_type)

    def snr(self, t):
        """SNR(t) = abar_t / (1 - abar_t), float64: a float for int t, an array (same module) for array t."""
        self.check_timestep(t)
        if isinstance(t, (int, np.integer)):
            return float(self.snr_table[int(t)])
        xp = get_array_module(t)
        return self.table("snr_table", xp, np.float64)[t]


if __name__ == "__main__":   # python -m minidiff.diffusion.schedule
    steps = (0, 99, 249, 499, 749, 999)
    print("abar_t = prod(1 - beta_s): how much of x_0 survives after t+1 noising steps")
    print(f"{'t':>14}" + "".join(f"{t:>11d}" for t in steps))
    for schedule_name in SCHEDULES:
        schedule = NoiseSchedule.make(schedule_name)
        print(f"{schedule_name:>14}" + "".join(f"{schedule.alphas_cumprod[t]:11.3e}" for t in steps))
    zero = NoiseSchedule.make("scaled_linear", rescale_zero_terminal_snr=True)
    print(f"{'scaled+zeroSNR':>14}" + "".join(f"{zero.alphas_cumprod[t]:11.3e}" for t in steps))
    x0 = np.ones((2, 3), np.float32)
    xt = NoiseSchedule.make("linear").q_sample(x0, np.array([0, 999]), np.zeros_like(x0))
    print("q_sample of ones with zero noise at t=0 and t=999:", xt[:, 0], xt.dtype)
