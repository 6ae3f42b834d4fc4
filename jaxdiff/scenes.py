"""Synthetic shaded scenes with exact depth: the offline data set of the depth hint.

No monocular depth estimator (MiDaS, which ControlNet used for its depth hint) can be
downloaded here, so the depth ControlNet trains on scenes whose depth is known in closed
form: an orthographic camera looks down the z axis at a back wall (z = 1) in front of
which float 1-3 spheres and axis-aligned boxes.

* sphere of centre (cx, cy, cz), radius r: z(x, y) = cz - sqrt(r^2 - (x-cx)^2 - (y-cy)^2)
  where the root is real, normal n = (x - cx, y - cy, z - cz) / r;
* box: its front face z = cz - half_depth over a square, normal (0, 0, -1).

The nearest surface wins (a z-buffer). Shading is Lambertian, albedo times max(0, n . l)
plus 0.15 ambient, with one light direction l per scene. The depth hint is ControlNet's
(MiDaS) convention, bright = near: hint = 1 - z, in [0, 1] (the wall is 0).

``load_scenes(num, size=..., seed=...)`` returns an ``ArraySource``-like source whose records
are ``{'image': uint8 (H, W, 1), 'hint': float32 (H, W, 1)}``; the same seed gives the same
scenes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

AMBIENT = 0.15


def sphere(
    x: np.ndarray, y: np.ndarray, *, centre: tuple[float, float, float], radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """The visible (near) half of a sphere seen along +z: (z, inf where missed; unit
    normals (3, ...)), z = cz - sqrt(r^2 - (x - cx)^2 - (y - cy)^2)."""
    cx, cy, cz = centre
    d2 = radius**2 - (x - cx) ** 2 - (y - cy) ** 2
    z = np.where(d2 > 0, cz - np.sqrt(np.maximum(d2, 0)), np.inf)
    normal = np.stack([x - cx, y - cy, np.where(d2 > 0, z - cz, 0)]) / radius
    return z, normal


def render_scene(rng: np.random.Generator, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One random scene -> (image uint8 (size, size, 1), depth hint float32 (size, size, 1))."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(coords, coords)  # x right, y down, both in (0, 1)
    z = np.ones((size, size), np.float32)  # the back wall
    shade = np.full((size, size), 0.35, np.float32)  # the wall's albedo * n.l with n = -z
    light = rng.normal(size=3) * np.array([0.6, 0.6, 0.0]) + np.array([0.0, 0.0, -1.0])
    light /= np.linalg.norm(light)
    for _ in range(int(rng.integers(1, 4))):
        albedo = rng.uniform(0.5, 1.0)
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        if rng.random() < 0.5:
            r = rng.uniform(0.12, 0.3)
            surface, normal = sphere(x, y, centre=(cx, cy, rng.uniform(r + 0.05, 0.95 - r)),
                                     radius=r)
        else:
            half, half_depth = rng.uniform(0.1, 0.25), rng.uniform(0.05, 0.2)
            cz = rng.uniform(half_depth + 0.05, 0.9)
            inside = (np.abs(x - cx) < half) & (np.abs(y - cy) < half)
            surface = np.where(inside, cz - half_depth, np.inf)
            normal = np.stack([0 * x, 0 * y, -np.ones_like(x)])
        lit = albedo * np.maximum(0.0, np.tensordot(light, normal, axes=1)) + AMBIENT
        nearer = surface < z
        z = np.where(nearer, surface, z)
        shade = np.where(nearer, lit, shade)
    image = np.round(np.clip(shade, 0, 1) * 255).astype(np.uint8)[..., None]
    depth = np.clip(1.0 - z, 0.0, 1.0).astype(np.float32)[..., None]
    return image, depth


@dataclasses.dataclass(frozen=True)
class SceneSource:
    """``num`` rendered scenes, held in memory: images (N, H, W, 1) uint8 and hints (N, H,
    W, 1) float32 depth (bright = near)."""

    images: np.ndarray
    hints: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "hint": self.hints[index]}


def load_scenes(num: int = 2000, *, size: int = 32, seed: int = 0) -> SceneSource:
    """Renders ``num`` scenes of ``size`` x ``size`` pixels with ``np.random.default_rng(seed)``."""
    if num < 1 or size < 4:
        raise ValueError(f"scenes need num >= 1 and size >= 4, got num={num}, size={size}")
    rng = np.random.default_rng(seed)
    pairs = [render_scene(rng, size=size) for _ in range(num)]
    return SceneSource(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
