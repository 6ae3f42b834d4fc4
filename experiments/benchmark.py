"""Side-by-side speed: jaxdiff against the same models in PyTorch, in ONE process.

    python -m experiments.benchmark --batch 32 --image_size 32 --repeats 5 --out bench.json
    python -m experiments.benchmark --only train --xla_options xla_cpu_use_onednn=true

Sections (``--only``, comma list):

* ``train``: images/s of one optimizer step. jaxdiff's ``UNet`` with the real
  ``make_denoising_loss`` (eps, DDPM eq. 14) + ``make_optimizer`` (clip, AdamW, EMA) +
  ``make_train_step``, against diffusers' ``UNet2DModel`` built from ``diffusers_kwargs`` with
  the same loss, t ~ U{0..T-1}, ``torch.optim.AdamW``, ``clip_grad_norm_`` and an EMA lerp.
  The parameter counts must match (else the run stops).
* ``sample``: images/s of DDIM-50 and DDPM (``--ddpm_steps``): jaxdiff's one-``lax.scan``
  samplers, the same jax model stepped by a Python loop of one jitted step, and the
  diffusers model stepped by ``DDIMScheduler`` / ``DDPMScheduler`` under ``inference_mode``.
* ``dit``: images/s of a DiT train step (``--dit_size``/``--dit_patch``, class labels)
  against ``experiments.torch_dit.TorchDiT``, a PyTorch twin with the same parameter count.
* ``canny`` (needs no torch): images/s of ``jaxdiff.hints.canny_jax`` jit-compiled on a batch
  of ``--canny_batch`` MNIST test digits (../shared/data/mnist; random shapes when absent)
  against a Python loop of ``cv2.Canny`` over the same images (thresholds 100/200).

Timing: everything is compiled/warmed up first (``--warmup`` calls, not timed); then the
variants run interleaved, A B C A B C ..., ``--repeats`` times, and the median is kept, so a
shared box's load hits every variant alike. Optional extra jax variants in the same
rotation: ``--xla_options k=v,...``, the same program compiled with these XLA:CPU options
(``compile(compiler_options=...)``), so an option's effect is measured in one process.

On a box with more runnable threads than cores, PyTorch's OpenMP threads spin-wait and its
numbers collapse (10-100x on small ops); run with ``OMP_WAIT_POLICY=PASSIVE`` there (the
README's numbers do). The JSON records it with the versions, XLA_FLAGS and the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxdiff import samplers, schedules
from jaxdiff import xla_options as jaxdiff_xla_options
from jaxdiff.losses import make_denoising_loss
from jaxdiff.optim import make_optimizer
from jaxdiff.train import create_train_state, make_mesh, make_train_step, shard_batch

SECTIONS = ("train", "sample", "dit", "canny")
NUM_TIMESTEPS = 1000
LEARNING_RATE, GRAD_CLIP, EMA_DECAY = 1e-4, 1.0, 0.999

_BATCH = flags.DEFINE_integer("batch", 32, "Batch size of the train steps.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", None, "Sampling batch (default --batch).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Image height = width.")
_IN_CHANNELS = flags.DEFINE_integer("in_channels", 3, "Image channels.")
_CHANNELS = flags.DEFINE_string("channels", "32,64,64", "UNet block_out_channels.")
_LAYERS = flags.DEFINE_integer("layers_per_block", 2, "UNet layers_per_block.")
_ATTENTION = flags.DEFINE_string("attention_levels", "1,2", "UNet attention levels ('' none).")
_GROUPS = flags.DEFINE_integer("norm_groups", 8, "UNet norm_num_groups.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median kept).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls per variant after compiling.")
_ONLY = flags.DEFINE_string("only", ",".join(SECTIONS), "Comma list of sections to run.")
_DDIM_STEPS = flags.DEFINE_integer("ddim_steps", 50, "DDIM steps.")
_DDPM_STEPS = flags.DEFINE_integer(
    "ddpm_steps", 1000, "DDPM steps = T of its linear schedule (1000 as trained; fewer on "
    "slow CPUs: same per-step cost, images/s scales as 1000/N)."
)
_DIT_SIZE = flags.DEFINE_string("dit_size", "S", "DiT preset (S, B, L, XL).")
_DIT_PATCH = flags.DEFINE_integer("dit_patch", 2, "DiT patch size.")
_XLA_OPTIONS = flags.DEFINE_string(
    "xla_options", "", "Also time jax compiled with these XLA options, e.g. "
    "'xla_cpu_use_onednn=true,xla_cpu_use_xnnpack=false'."
)
_CANNY_BATCH = flags.DEFINE_integer("canny_batch", 256, "Images per call of the canny section.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here (and .md beside it).")


# ------------------------------------------------------------------------------------------
# Timing and reporting (no torch needed)
# ------------------------------------------------------------------------------------------


def interleaved_times(
    fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each blocking ``fn``, measured A B C A B C ... ``repeats`` times
    after ``warmup`` untimed rounds, so background load is shared by all variants."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def make_rows(
    section: str, times: dict[str, list[float]], *, images_per_call: int, reference: str
) -> list[dict[str, Any]]:
    """One row per variant: median seconds, images/s and the images/s ratio to ``reference``."""
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return [
        dict(
            section=section, variant=name, median_s=medians[name],
            images_per_s=images_per_call / medians[name],
            vs_reference=medians[reference] / medians[name], reference=reference,
            times_s=times[name],
        )
        for name in times
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a markdown table (section, variant, images/s, median s, x reference)."""
    lines = ["| section | variant | images/s | median s/call | vs reference |",
             "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        lines.append(
            f"| {r['section']} | {r['variant']} | {r['images_per_s']:.2f} | "
            f"{r['median_s']:.3f} | {r['vs_reference']:.2f}x {r['reference']} |"
        )
    return "\n".join(lines)


def parse_xla_options(text: str) -> dict[str, bool | int | str]:
    """'a=true,b=3,c=X' -> {'a': True, 'b': 3, 'c': 'X'} (XLA debug options by name)."""
    options: dict[str, bool | int | str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--xla_options wants name=value pairs, got {item!r}")
        key = key.strip().removeprefix("--")
        low = value.strip().lower()
        options[key] = low == "true" if low in ("true", "false") else (
            int(value) if value.strip().lstrip("-").isdigit() else value.strip())
    return options


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


# ------------------------------------------------------------------------------------------
# jax side
# ------------------------------------------------------------------------------------------


def jax_variants(
    make_jitted: Callable[[dict | None], Any], args: tuple, *, xla_options: dict
) -> dict[str, Any]:
    """Compiled executables of one program, from ``make_jitted(compiler_options)`` (None:
    jaxdiff's own, ``jaxdiff.xla_options``): 'jaxdiff'; 'jaxdiff, XLA default options' when
    jaxdiff sets any on this backend, so their effect is measured in the same run; and
    'jaxdiff + xla_options' with ``--xla_options`` added."""
    compiled = {"jaxdiff": make_jitted(None).lower(*args).compile()}
    own = jaxdiff_xla_options.compiler_options()
    if own:
        compiled["jaxdiff, XLA default options"] = make_jitted({}).lower(*args).compile()
    if xla_options:
        compiled["jaxdiff + xla_options"] = make_jitted({**own, **xla_options}).lower(
            *args).compile()
    return compiled


def jit_with(fn: Callable) -> Callable[[dict | None], Any]:
    """``options -> jax.jit(fn)`` compiled with ``options`` (None: jaxdiff's own)."""
    def make(options):
        if options is None:
            options = jaxdiff_xla_options.compiler_options()
        return jax.jit(fn, compiler_options=options or None)

    return make


def ddim_step_fn(apply_fn: Callable, schedule: schedules.Schedule) -> Callable:
    """Jitted (params, x, t, t_prev) -> x_prev: one deterministic DDIM step (Song et al. 2021,
    eq. 12, eta = 0, x0 clipped), as ``jaxdiff.samplers.ddim`` computes it inside its scan."""

    @jaxdiff_xla_options.jit
    def step(params, x, t, t_prev):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, _ = schedules.to_x0_eps(
            schedule, x, t_batch, apply_fn({"params": params}, x, t_batch), "eps"
        )
        ab = schedule.alpha_bars[t]
        ab_prev = jnp.where(t_prev >= 0, schedule.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        return jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev) * eps

    return step


def ddpm_step_fn(apply_fn: Callable, schedule: schedules.Schedule) -> Callable:
    """Jitted (params, x, t, step_key) -> x_{t-1}: one DDPM ancestral step (alg. 2, x0
    clipped, sigma^2 = beta_t, noise normal(fold_in(step_key, t))), as ``samplers.ddpm``."""

    @jaxdiff_xla_options.jit
    def step(params, x, t, step_key):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, _ = schedules.to_x0_eps(
            schedule, x, t_batch, apply_fn({"params": params}, x, t_batch), "eps"
        )
        mean = samplers.posterior_mean(schedule, x, t, jnp.clip(x0, -1.0, 1.0))
        sigma = jnp.where(t > 0, jnp.sqrt(schedule.betas[t]), 0.0)
        return mean + sigma * jax.random.normal(jax.random.fold_in(step_key, t), x.shape)

    return step


def ddim_timesteps(num_timesteps: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, t_prev) pairs of ``samplers.ddim``: rounded linspace T-1..0, t_prev = -1 at the end."""
    ts = np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)
    return ts, np.append(ts[1:], -1).astype(np.int32)


def jax_train_setup(model, params, batch_np: dict[str, np.ndarray]):
    """(compiler options -> jitted step, initial state, sharded batch) for the real jaxdiff
    train step."""
    schedule = schedules.linear(NUM_TIMESTEPS)
    loss_fn = make_denoising_loss(model.apply, schedule, prediction="eps", cond_drop_prob=0.0)
    optimizer = make_optimizer(
        learning_rate=LEARNING_RATE, grad_clip=GRAD_CLIP, ema_decay=EMA_DECAY
    )
    mesh = make_mesh()
    state = create_train_state(params, optimizer, jax.random.key(1))

    def make_step(options):
        return make_train_step(loss_fn, optimizer, mesh, compiler_options=options)

    return make_step, state, shard_batch(batch_np, mesh)


def jax_train_callables(
    make_step, state, batch, **variant_kw
) -> dict[str, Callable[[], Any]]:
    """One blocking callable per compiled variant; each owns a copy of the (donated) state,
    steps it once per call and returns that step's metrics."""
    fns = {}
    for name, compiled in jax_variants(make_step, (state, batch), **variant_kw).items():
        holder = {"state": jax.tree.map(jnp.copy, state)}

        def run(compiled=compiled, holder=holder):
            holder["state"], metrics = compiled(holder["state"], batch)
            return jax.block_until_ready(metrics)

        fns[name] = run
    return fns


def count_params(params: Any) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def check_param_counts(name: str, jax_count: int, torch_count: int) -> None:
    """Prints both counts; raises SystemExit when they differ (the models are not twins)."""
    print(f"{name}: jaxdiff {jax_count:,} parameters, PyTorch {torch_count:,} parameters")
    if jax_count != torch_count:
        raise SystemExit(
            f"{name}: parameter counts differ ({jax_count} vs {torch_count}); the PyTorch "
            "model is not the same architecture, so its timing would not be comparable"
        )
    print(f"{name}: parameter counts match")


# ------------------------------------------------------------------------------------------
# Sections (these need torch + diffusers: pip install -r requirements-bench.txt)
# ------------------------------------------------------------------------------------------


def _unet_pair(cfg: dict[str, Any]):
    import torch
    from diffusers import UNet2DModel

    from jaxdiff.models.unet import UNet, diffusers_kwargs

    model = UNet(
        block_out_channels=cfg["channels"], layers_per_block=cfg["layers_per_block"],
        attention_levels=cfg["attention_levels"], norm_num_groups=cfg["norm_groups"],
    )
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    x = jnp.zeros((b, s, s, c))
    params = model.init(jax.random.key(0), x, jnp.zeros((b,), jnp.int32))["params"]
    torch.manual_seed(0)
    twin = UNet2DModel(**diffusers_kwargs(model, in_channels=c, sample_size=s))
    n_torch = sum(p.numel() for p in twin.parameters())
    check_param_counts("UNet", count_params(params), n_torch)
    return model, params, twin


def torch_train_fn(net: Any, forward: Callable, images, labels=None) -> Callable[[], None]:
    """One PyTorch step with the jaxdiff recipe: t ~ U{0..T-1}, eps ~ N(0, I), x_t by DDPM
    eq. 4, MSE on eps, AdamW, clip_grad_norm_, EMA lerp."""
    import torch

    alpha_bars = torch.tensor(np.asarray(schedules.linear(NUM_TIMESTEPS).alpha_bars))
    params = [p for p in net.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    net.train()

    def step():
        t = torch.randint(0, NUM_TIMESTEPS, (images.shape[0],))
        noise = torch.randn_like(images)
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * images + (1 - ab).sqrt() * noise
        loss = torch.nn.functional.mse_loss(forward(x_t, t, labels), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)

    return step


def bench_train(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch

    model, params, twin = _unet_pair(cfg)
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    images = np.random.default_rng(0).uniform(-1, 1, (b, s, s, c)).astype(np.float32)
    step, state, batch = jax_train_setup(model, params, {"image": images})
    fns = jax_train_callables(step, state, batch, **variant_kw)
    fns["PyTorch (diffusers UNet2DModel)"] = torch_train_fn(
        twin, lambda x, t, _: twin(x, t).sample, torch.from_numpy(images).permute(0, 3, 1, 2)
    )
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows("train UNet", times, images_per_call=b,
                     reference="PyTorch (diffusers UNet2DModel)")


def bench_sample(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler

    model, params, twin = _unet_pair(cfg)
    twin.eval()
    b, s, c = cfg["sample_batch"], cfg["image_size"], cfg["in_channels"]
    shape = (b, s, s, c)
    schedule = schedules.linear(NUM_TIMESTEPS)
    key = jax.random.key(0)
    x_init = jax.random.normal(key, shape)
    denoise = lambda p: lambda x, t, cond: model.apply({"params": p}, x, t, cond)  # noqa: E731
    sched_kw = dict(num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear",
                    beta_start=1e-4, beta_end=0.02, clip_sample=True)
    rows = []
    for name, num_steps in (("DDIM", cfg["ddim_steps"]), ("DDPM", cfg["ddpm_steps"])):
        if name == "DDIM":
            scan = jit_with(lambda p, k, n=num_steps: samplers.ddim(
                denoise(p), schedule, k, shape, num_steps=n, initial_noise=x_init)[0])
            one_step = ddim_step_fn(model.apply, schedule)
            pairs = list(zip(*ddim_timesteps(NUM_TIMESTEPS, num_steps), strict=True))
            loop_args = [(jnp.int32(t), jnp.int32(tp)) for t, tp in pairs]
            scheduler = DDIMScheduler(**sched_kw)
        else:
            # DDPM walks every step of its schedule; --ddpm_steps < 1000 gives both sides a
            # T = ddpm_steps linear schedule: the same per-step cost, a shorter chain.
            ddpm_schedule = schedules.linear(num_steps)
            scan = jit_with(lambda p, k, sch=ddpm_schedule: samplers.ddpm(
                denoise(p), sch, k, shape, initial_noise=x_init)[0])
            one_step = ddpm_step_fn(model.apply, ddpm_schedule)
            step_key = jax.random.split(key)[1]
            loop_args = [(jnp.int32(t), step_key) for t in range(num_steps - 1, -1, -1)]
            scheduler = DDPMScheduler(**dict(sched_kw, num_train_timesteps=num_steps))
        fns = {}
        for vname, compiled in jax_variants(scan, (params, key), **variant_kw).items():
            fns[f"{vname} {name} one lax.scan"] = (
                lambda compiled=compiled: jax.block_until_ready(compiled(params, key)))
        compiled_step = one_step.lower(params, x_init, *loop_args[0]).compile()

        def python_loop(compiled_step=compiled_step, loop_args=loop_args):
            x = x_init
            for args in loop_args:
                x = compiled_step(params, x, *args)
            jax.block_until_ready(x)

        fns[f"jaxdiff {name} Python loop of jitted steps"] = python_loop
        fns[f"PyTorch {name} diffusers scheduler loop"] = _torch_sampler(
            twin, scheduler, num_steps, torch.from_numpy(np.array(x_init)).permute(0, 3, 1, 2)
        )
        times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
        rows += make_rows(f"sample {name}-{num_steps}", times, images_per_call=b,
                          reference=f"PyTorch {name} diffusers scheduler loop")
    return rows


def _torch_sampler(twin, scheduler, num_steps: int, x_init) -> Callable[[], None]:
    import torch

    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps

    def run():
        with torch.inference_mode():
            x = x_init.clone()
            for t in timesteps:
                x = scheduler.step(twin(x, t).sample, t, x).prev_sample

    return run


def bench_dit(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch

    from experiments.torch_dit import TorchDiT
    from jaxdiff.models.dit import DiT, dit_config

    num_classes = 10
    arch = dit_config(cfg["dit_size"], patch_size=cfg["dit_patch"])
    model = DiT(**arch, num_classes=num_classes)
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32)
    labels = rng.integers(0, num_classes, (b,)).astype(np.int32)
    params = model.init(jax.random.key(0), jnp.asarray(images), jnp.zeros((b,), jnp.int32),
                        jnp.asarray(labels))["params"]
    torch.manual_seed(0)
    twin = TorchDiT(**arch, in_channels=c, input_size=s, num_classes=num_classes)
    label = f"DiT-{cfg['dit_size']}/{cfg['dit_patch']}"
    check_param_counts(label, count_params(params), sum(p.numel() for p in twin.parameters()))
    step, state, batch = jax_train_setup(model, params, {"image": images, "label": labels})
    fns = jax_train_callables(step, state, batch, **variant_kw)
    fns[f"PyTorch {label} twin"] = torch_train_fn(
        twin, twin, torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long()
    )
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows(f"train {label}", times, images_per_call=b,
                     reference=f"PyTorch {label} twin")


def canny_callables(images: np.ndarray, *, low: float = 100.0, high: float = 200.0):
    """{'jax canny (jit)': ..., 'cv2.Canny loop': ...}: blocking calls over the same uint8
    images (N, H, W, 1); the jax one compiled here, before any timing."""
    from jaxdiff import hints

    x = jnp.asarray(images.astype(np.float32) / 127.5 - 1.0)
    edges = jax.jit(lambda a: hints.canny_jax(a, low=low, high=high))
    edges(x).block_until_ready()
    return {
        "jax canny (jit)": lambda: edges(x).block_until_ready(),
        "cv2.Canny loop": lambda: hints.canny(images, low=low, high=high),
    }


def bench_canny(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    del variant_kw
    from jaxdiff import sources

    n = cfg["canny_batch"]
    mnist = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
    try:
        images = sources.load_idx(mnist, split="test").images[:n]
    except FileNotFoundError:
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    fns = canny_callables(np.ascontiguousarray(images))
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows("canny", times, images_per_call=len(images), reference="cv2.Canny loop")


def environment() -> dict[str, Any]:
    """Device, versions, flags and command of this run, for the JSON (torch and diffusers
    versions when installed)."""
    import flax

    try:
        import diffusers
        import torch
    except ImportError:  # the canny section needs neither
        diffusers = torch = None

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    return dict(
        device=f"{jax.devices()[0].platform}: {cpu}", jax=jax.__version__, flax=flax.__version__,
        torch=torch and torch.__version__, diffusers=diffusers and diffusers.__version__,
        torch_threads=torch and torch.get_num_threads(), XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", ""),
        command="python -m experiments.benchmark " + " ".join(sys.argv[1:]),
        load_average=os.getloadavg(),
    )


def main(argv: list[str]) -> None:
    del argv
    only = [s.strip() for s in _ONLY.value.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--only takes a comma list of {SECTIONS}, got unknown {unknown}")
    cfg = dict(
        batch=_BATCH.value, sample_batch=_SAMPLE_BATCH.value or _BATCH.value,
        image_size=_IMAGE_SIZE.value, in_channels=_IN_CHANNELS.value,
        channels=parse_ints(_CHANNELS.value), layers_per_block=_LAYERS.value,
        attention_levels=parse_ints(_ATTENTION.value), norm_groups=_GROUPS.value,
        repeats=_REPEATS.value, warmup=_WARMUP.value, ddim_steps=_DDIM_STEPS.value,
        ddpm_steps=_DDPM_STEPS.value, dit_size=_DIT_SIZE.value, dit_patch=_DIT_PATCH.value,
        canny_batch=_CANNY_BATCH.value,
    )
    variant_kw = dict(xla_options=parse_xla_options(_XLA_OPTIONS.value))
    env = environment()
    print(json.dumps(env))
    rows: list[dict[str, Any]] = []
    sections = (
        ("train", bench_train), ("sample", bench_sample), ("dit", bench_dit),
        ("canny", bench_canny),
    )
    for section, fn in sections:
        if section in only:
            new = fn(cfg, variant_kw)
            print(markdown_table(new), flush=True)
            rows += new
    table = markdown_table(rows)
    print(table)
    if _OUT.value:
        result = dict(env, config=cfg, xla_options=variant_kw["xla_options"], rows=rows)
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=1, default=str)
        with open(os.path.splitext(_OUT.value)[0] + ".md", "w") as f:
            f.write(table + "\n")
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
