"""experiments.evaluate's report: ``eval.json``, ``eval.md`` (a markdown table) and
``eval.png`` (FID and accuracy against sampling steps, one curve per sampler and scale)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def write_report(workdir: pathlib.Path, report: dict[str, Any]) -> dict[str, pathlib.Path]:
    """Writes eval.json, eval.md and eval.png; returns their paths."""
    paths = {ext: workdir / f"eval.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    c = report["classifier"]
    lines = [
        f"# Evaluation of {report['workdir']} (step {report['checkpoint_step']}, "
        f"{report['params']} params)",
        "",
        f"- {report['num_samples']} samples per setting; FID in the feature space of a "
        f"classifier ({c['feature_dim']} features) trained on {c['num_train']} real images",
        f"- classifier held-out accuracy: {c['heldout_accuracy']:.4f} ({c['num_heldout']} images)",
        f"- real-vs-real FID floor ({report['num_samples']} vs {report['num_samples']} held-out "
        f"images, the sample count of every FID below): {report['real_fid_floor']:.3f}",
    ]
    guide = report.get("guiding_classifier")
    if guide:
        lines.append(f"- classifier guidance by {guide['workdir']} (step "
                     f"{guide['checkpoint_step']})")
    lines += [
        "",
        f"| sampler | steps | guidance |{' classifier scale |' if guide else ''} FID | "
        "accuracy | sampling seconds |",
        f"| --- | ---: | ---: |{' ---: |' if guide else ''} ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        accuracy = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        classifier_scale = f" {r['classifier_scale']:g} |" if guide else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} |"
                     f"{classifier_scale} {r['fid']:.3f} | {accuracy} | "
                     f"{r['sample_seconds']:.1f} |")
    paths["md"].write_text("\n".join(lines) + "\n")
    plot(paths["png"], report)
    return paths


def plot(path: pathlib.Path, report: dict[str, Any]) -> None:
    results = report["results"]
    with_accuracy = any(r["accuracy"] is not None for r in results)
    fig = Figure(figsize=(12 if with_accuracy else 7, 4))
    FigureCanvasAgg(fig)  # files only: no backend switch, no display
    axes = fig.subplots(1, 2 if with_accuracy else 1, squeeze=False)
    # One curve per (sampler, CFG w, classifier-guidance s).
    curves: dict[tuple[str, tuple[float, float]], list[dict[str, Any]]] = {}
    for r in results:
        scale = (r["guidance_scale"], r.get("classifier_scale", 0.0))
        curves.setdefault((r["sampler"], scale), []).append(r)
    scales = sorted({scale for _, scale in curves})
    colors = {w: matplotlib.colormaps["tab10"](i % 10) for i, w in enumerate(scales)}
    markers = {"ddpm": "s", "ddpm_no_noise": "D", "ddim": "o", "corruption": "v"}
    metrics = [("fid", "FID (classifier features)")]
    if with_accuracy:
        metrics.append(("accuracy", "class-conditional accuracy"))
    for ax, (metric, title) in zip(axes[0], metrics, strict=True):
        for (sampler, scale), points in curves.items():
            points = sorted(points, key=lambda r: r["steps"])
            # Colour = guidance scale, marker = sampler: the same w reads alike across samplers.
            ax.plot([p["steps"] for p in points], [p[metric] for p in points],
                    color=colors[scale], marker=markers.get(sampler, "^"),
                    label=f"{sampler}, w={scale[0]:g}"
                    + (f", s={scale[1]:g}" if report.get("guiding_classifier") else ""))
        reference = (report["real_fid_floor"] if metric == "fid"
                     else report["classifier"]["heldout_accuracy"])
        ax.axhline(reference, color="gray", linestyle="--")
        ax.annotate("real vs real" if metric == "fid" else "classifier on real images",
                    (0.01, reference), xycoords=("axes fraction", "data"), color="gray",
                    fontsize=8, va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    # One legend outside the plots, so it never hides a point.
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
