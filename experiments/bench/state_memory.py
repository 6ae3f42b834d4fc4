"""Bytes of the train state (params, Adam moments, EMA) each device holds under a mesh with a
given ``mesh.fsdp``, from ``jax.eval_shape``: nothing is allocated or trained."""

from __future__ import annotations

from typing import Any


def report(config: Any, *, fsdp_values: list[int]) -> list[dict]:
    """One row per fsdp value: parameter count, state bytes per device (max over devices)
    and, of those, the params' own bytes."""
    import jax

    from experiments.runs import builders
    from jaxdiff import train as jd_train

    model = builders.build_model(config)
    optimizer = builders.build_optimizer(config)
    shapes = jax.eval_shape(
        lambda key: builders.init_state(config, model, optimizer, key), jax.random.key(0)
    )
    rows = []
    for fsdp in fsdp_values:
        mesh = jd_train.make_mesh(fsdp=fsdp)
        shardings = jd_train.state_shardings(shapes, mesh)
        state = jd_train.bytes_per_device(shapes, shardings)
        params = jd_train.bytes_per_device(shapes.params, shardings.params)
        rows.append(dict(
            devices=mesh.size, fsdp=fsdp,
            num_params=sum(int(x.size) for x in jax.tree.leaves(shapes.params)),
            params_bytes_per_device=max(params.values()),
            state_bytes_per_device=max(state.values()),
        ))
    return rows
