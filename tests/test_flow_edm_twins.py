"""PyTorch twins of the continuous-time samplers: ``flow_euler`` on diffusers' grid equals
``FlowMatchEulerDiscreteScheduler``'s trajectory, and ``edm_heun`` equals k-diffusion's
``sample_heun`` on ``get_sigmas_karras``.

k-diffusion itself imports torchvision, torchsde and torchdiffeq at package import, and
PyPI's torchvision would replace the CPU torch, so its two functions are transcribed below
line for line from crowsonkb/k-diffusion, k_diffusion/sampling.py (v0.1.1.post1:
``append_zero``, ``get_sigmas_karras``, ``to_d``, ``sample_heun``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import edm, samplers

torch = pytest.importorskip("torch")


# --- k_diffusion/sampling.py (v0.1.1.post1), transcribed -------------------------------
def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """Constructs the noise schedule of Karras et al. (2022)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def to_d(x, sigma, denoised):
    """Converts a denoiser output to a Karras ODE derivative."""
    return (x - denoised) / sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def sample_heun(model, x, sigmas, callback=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = (min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
                 if s_tmin <= sigmas[i] <= s_tmax else 0.0)
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            # Euler method
            x = x + d * dt
        else:
            # Heun's method
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x
# ------------------------------------------------------------------------------------------


SHAPE = (3, 4, 4, 1)


def _noise():
    return np.array(jax.random.normal(jax.random.key(0), SHAPE))  # a writable copy


def _twin_model(x, time, lib):
    """The same nonlinear function of (x, time) in jax and torch."""
    t = time.reshape((-1, 1, 1, 1))
    return 0.7 * lib.tanh(x) - 0.4 * x + 0.3 * lib.sin(t / 300.0) * x + 0.001 * t


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 13])
def test_flow_euler_equals_diffusers_flow_match_euler(shift, steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    np.testing.assert_allclose(samplers.flow_grid(steps, shift=shift, grid="diffusers"),
                               scheduler.sigmas.numpy(), rtol=1e-6)
    x = torch.from_numpy(_noise())
    frames = []
    for t in scheduler.timesteps:
        velocity = _twin_model(x, t.expand(x.shape[0]), torch)
        x = scheduler.step(velocity, t, x).prev_sample
        frames.append(x.numpy())
    out, traj = samplers.flow_euler(
        lambda x, time, c: _twin_model(x, time, jnp), jax.random.key(1), SHAPE,
        num_steps=steps, shift=shift, grid="diffusers", initial_noise=jnp.asarray(_noise()),
        keep_every=1,
    )
    np.testing.assert_allclose(traj, np.stack(frames), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, frames[-1], rtol=1e-5, atol=1e-5)


def _edm_twin_denoiser(x, sigma, lib):
    s = sigma.reshape((-1, 1, 1, 1))
    return 0.8 * lib.tanh(x / (1.0 + s)) + 0.05 * lib.log(s) * x / (1.0 + s * s)


@pytest.mark.parametrize("steps", [2, 7, 18])
def test_edm_heun_equals_k_diffusion_sample_heun(steps):
    sigmas = get_sigmas_karras(steps, 0.002, 80.0, rho=7.0)
    np.testing.assert_allclose(edm.karras_sigmas(steps), sigmas.numpy(), rtol=1e-5)
    noise = torch.from_numpy(_noise())
    frames = []
    ref = sample_heun(lambda x, s: _edm_twin_denoiser(x, s, torch), noise * sigmas[0], sigmas,
                      callback=lambda info: frames.append(info["x"].numpy()))
    out, traj = samplers.edm_heun(
        lambda x, s, c: _edm_twin_denoiser(x, s, jnp), jax.random.key(1), SHAPE,
        num_steps=steps, initial_noise=jnp.asarray(_noise()), keep_every=1,
    )
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)
    # k-diffusion's callback sees x before each step: frames 1.. are our steps 0..N-2.
    np.testing.assert_allclose(traj[:-1], np.stack(frames[1:]), rtol=1e-4, atol=1e-4)
