"""experiments.benchmark's timing, rows, table and peak-memory helpers (no torch needed).

Timing: every variant is compiled/warmed up first; then the variants run interleaved,
A B C A B C ..., ``repeats`` times and the median is kept, so a shared box's load hits every
variant alike. A row's ``vs`` holds the images/s ratio to each reference variant.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax

GIB = 2.0**30


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
    section: str,
    times: dict[str, list[float]],
    *,
    images_per_call: int,
    reference: str | tuple[str, ...],
    extra: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per variant: median seconds, images/s and the images/s ratio to ``reference``
    (``vs_reference``; with several references, the first, and ``vs`` holds all of them).
    ``extra[variant]`` is merged into that variant's row (dtype, MFU, peak memory...)."""
    references = (reference,) if isinstance(reference, str) else tuple(reference)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    rows = []
    for name in times:
        vs = {ref: medians[ref] / medians[name] for ref in references}
        rows.append(dict(
            section=section, variant=name, median_s=medians[name],
            images_per_s=images_per_call / medians[name],
            vs_reference=vs[references[0]], reference=references[0],
            **({"vs": vs} if len(references) > 1 else {}),
            times_s=times[name], **(extra or {}).get(name, {}),
        ))
    return rows


def _ratios(row: dict[str, Any]) -> str:
    vs = row.get("vs") or {row["reference"]: row["vs_reference"]}
    return "; ".join(f"{ratio:.2f}x {ref}" for ref, ratio in vs.items())


def _optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a markdown table (section, variant, images/s, median s, x reference); the
    columns MFU and peak GiB are added when any row carries ``mfu`` / ``peak_bytes``."""
    with_mfu = any("mfu" in r for r in rows)
    with_memory = any("peak_bytes" in r for r in rows)
    head = "| section | variant | images/s | median s/call | vs reference |"
    rule = "| --- | --- | ---: | ---: | --- |"
    if with_mfu:
        head, rule = head + " MFU |", rule + " ---: |"
    if with_memory:
        head, rule = head + " peak GiB |", rule + " ---: |"
    lines = [head, rule]
    for r in rows:
        line = (f"| {r['section']} | {r['variant']} | {r['images_per_s']:.2f} | "
                f"{r['median_s']:.3f} | {_ratios(r)} |")
        if with_mfu:
            mfu = r.get("mfu")
            line += " - |" if mfu is None else f" {100 * mfu:.1f}% |"
        if with_memory:
            peak = r.get("peak_bytes")
            line += f" {_optional(None if peak is None else peak / GIB, '.2f')} |"
        lines.append(line)
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


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


# ------------------------------------------------------------------------------------------
# Peak device memory
# ------------------------------------------------------------------------------------------


def jax_peak_bytes() -> int | None:
    """The largest ``peak_bytes_in_use`` over the local devices (None where the backend keeps
    no such statistic, e.g. the CPU). JAX cannot reset it: it is this process's high-water
    mark so far."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def _torch_cuda():
    torch = sys.modules.get("torch")  # never imported here for the jax-only sections
    return torch if torch is not None and torch.cuda.is_available() else None


def torch_reset_peak() -> None:
    if torch := _torch_cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def torch_peak_bytes() -> int | None:
    """``torch.cuda.max_memory_allocated()`` since the last reset; None without CUDA."""
    torch = _torch_cuda()
    return None if torch is None else int(torch.cuda.max_memory_allocated())


def program_bytes(compiled: Any) -> int | None:
    """XLA's own estimate of one compiled program's device memory: arguments + outputs -
    donated aliases + temporaries (``compiled.memory_analysis()``; None where unavailable)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def first_call_peaks(
    fns: dict[str, Callable[[], Any]], *, torch_variants: Iterable[str]
) -> dict[str, dict[str, int | None]]:
    """Calls each ``fn`` once (an untimed warm-up, in order) and returns {name: {'peak_bytes'}}:
    for a torch variant the CUDA peak of that call alone (the counter is reset first); for a
    jax variant the device's high-water mark after it (an upper bound: jax keeps no
    resettable peak), with ``program_bytes`` of its executable when the fn carries
    ``.compiled``."""
    torch_variants = set(torch_variants)
    peaks = {}
    for name, fn in fns.items():
        if name in torch_variants:
            torch_reset_peak()
            fn()
            peaks[name] = dict(peak_bytes=torch_peak_bytes())
        else:
            fn()
            compiled = getattr(fn, "compiled", None)
            peaks[name] = dict(peak_bytes=jax_peak_bytes(),
                               program_bytes=None if compiled is None else program_bytes(compiled))
    return peaks
