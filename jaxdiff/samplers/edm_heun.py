"""EDM's Heun sampler (Karras et al. 2022, alg. 1, with alg. 2's stochastic churn as an
option) over the rho = 7 noise levels of eq. 5.

Model contract: ``denoise_fn(x, sigma, cond) -> D(x; sigma)``, the denoised image (EDM eq. 7;
``jaxdiff.edm.precondition`` builds it from a jaxdiff model), with a float32 (B,) sigma.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxdiff import edm
from jaxdiff.samplers._core import DenoiseFn, Result, initial, scan, step_noise


def edm_heun(
    denoise_fn: DenoiseFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    num_steps: int = 18,
    sigma_min: float = edm.SIGMA_MIN,
    sigma_max: float = edm.SIGMA_MAX,
    rho: float = edm.RHO,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
    keep_every: int = 0,
) -> Result:
    """EDM alg. 2 (alg. 1 at the default ``s_churn = 0``) over sigma_0 > ... > sigma_{N-1},
    sigma_N = 0 (``edm.karras_sigmas``), from x_0 = sigma_max n, n = N(0, I) noise
    (``initial_noise`` when given):

        gamma_i = min(S_churn / N, sqrt(2) - 1) if sigma_i in [S_tmin, S_tmax] else 0
        sigma_hat = (1 + gamma_i) sigma_i,  x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z
        d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat
        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d                        (Euler)
        if sigma_{i+1} != 0: d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1},
                             x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2

    N steps take 2N - 1 model evaluations (the last step is Euler's). The churn noise z of
    step i is ``normal(fold_in(step_key, i))``; k-diffusion's ``sample_heun`` is the same
    algorithm.
    """
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")
    sigmas = edm.karras_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    gamma = min(s_churn / int(num_steps), math.sqrt(2.0) - 1.0)
    gammas = jnp.where(
        (sigmas[:-1] >= s_tmin) & (sigmas[:-1] <= s_tmax), gamma, 0.0
    ).astype(jnp.float32)
    init_key, step_key = jax.random.split(key)
    x_init = initial(init_key, shape, initial_noise) * sigmas[0]

    def slope(x, sigma):
        sigma_b = jnp.full((x.shape[0],), sigma, jnp.float32)
        return (x - denoise_fn(x, sigma_b, cond).astype(x.dtype)) / sigma

    def step(x, inputs):
        i, sigma, sigma_next, gamma_i = inputs
        sigma_hat = sigma * (1.0 + gamma_i)
        if s_churn > 0:  # static: alg. 1 draws no noise
            # sqrt(sigma_hat^2 - sigma^2) written without the cancellation (a fused
            # multiply-add made it sqrt of a tiny negative, NaN, where gamma_i = 0).
            added = sigma * jnp.sqrt(gamma_i * (2.0 + gamma_i))
            x = x + added * s_noise * step_noise(step_key, i, x)
        d = slope(x, sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d

        def heun(x_next):
            d_next = slope(x_next, sigma_next)
            return x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)

        # sigma_{i+1} = 0 only at the last step: a scalar predicate, so only one branch runs.
        return jax.lax.cond(sigma_next > 0, heun, lambda x_next: x_next, x_next)

    n = int(num_steps)
    xs = (jnp.arange(n, dtype=jnp.int32), jnp.asarray(sigmas[:-1]), jnp.asarray(sigmas[1:]),
          gammas)
    return scan(step, x_init, xs, num_steps=n, keep_every=keep_every, mesh=mesh)
