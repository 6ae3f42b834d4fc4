"""experiments.benchmark's ``attention`` section: one attention's forward + backward.

``jax.nn.dot_product_attention`` against ``jaxdiff.attention.grouped_attention`` (what the
models use on CPUs) and PyTorch's ``scaled_dot_product_attention`` (a fused flash kernel on
CPUs), each the gradient of ``sum(out**2)`` w.r.t. q, k, v, at two shapes: the benchmark
UNet's first attention level (``--image_size``/2 squared tokens, ``channels[1] / 8`` heads of
8, as ``attention_head_dim=8``) and DiT-``--dit_size``/``--dit_patch``'s self-attention.
Images/s is ``--batch`` over the seconds of one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.timing import interleaved_times, make_rows
from jaxdiff import attention, xla_options
from jaxdiff.models.dit import dit_config


def attention_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """{label: (batch, tokens, heads, head_dim)} of the UNet's and the DiT's attention."""
    b, s = cfg["batch"], cfg["image_size"]
    unet_c = cfg["channels"][min(1, len(cfg["channels"]) - 1)]
    dit = dit_config(cfg["dit_size"], patch_size=cfg["dit_patch"])
    dit_tokens = (s // cfg["dit_patch"]) ** 2
    return {
        f"UNet {s // 2}x{s // 2}": (b, (s // 2) ** 2, unet_c // 8, 8),
        f"DiT-{cfg['dit_size']}/{cfg['dit_patch']}": (
            b, dit_tokens, dit["num_heads"], dit["hidden_size"] // dit["num_heads"]),
    }


def attention_callables(shape: tuple[int, int, int, int]) -> dict[str, Callable[[], Any]]:
    """Blocking fwd+bwd callables over the same (B, L, heads, D) q, k, v."""
    import torch

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    fns = {}
    for name, fn in (("jax.nn.dot_product_attention", jax.nn.dot_product_attention),
                     ("jaxdiff grouped_attention", attention.grouped_attention)):
        grad = xla_options.jit(jax.value_and_grad(
            lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))
        args = tuple(jnp.asarray(a) for a in (q, k, v))
        grad(*args)  # compile outside the timing
        fns[name] = lambda grad=grad, args=args: jax.block_until_ready(grad(*args))
    tq, tk, tv = (torch.from_numpy(a).permute(0, 2, 1, 3).contiguous().requires_grad_()
                  for a in (q, k, v))

    def torch_sdpa():
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        (out**2).sum().backward()

    fns["PyTorch scaled_dot_product_attention"] = torch_sdpa
    return fns


def bench_attention(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    del variant_kw
    rows = []
    for label, shape in attention_shapes(cfg).items():
        times = interleaved_times(attention_callables(shape), repeats=cfg["repeats"],
                                  warmup=cfg["warmup"])
        rows += make_rows(f"attention fwd+bwd {label} {shape}", times, images_per_call=shape[0],
                          reference="PyTorch scaled_dot_product_attention")
    return rows
