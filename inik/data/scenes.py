"""The layered scenes of synthetic defocus (:mod:`.synthetic`): depth layers of a photo,
foreground-object masks, and procedural dead-leaves scenes with their shapes and textures."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A draw from [lo, hi], uniform in the logarithm."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random field in [0, 1], (size, size): bicubic-upsampled coarse
    noise plus a random ramp (a receding ground plane)."""
    g = int(rng.integers(2, 7))
    coarse = torch.from_numpy(rng.uniform(0, 1, (1, 1, g, g)).astype(np.float32))
    f = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0, 0].numpy()
    ramp_angle, ramp_amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 1.5)
    yy, xx = np.mgrid[0:size, 0:size] / size
    f = f + ramp_amp * (np.cos(ramp_angle) * xx + np.sin(ramp_angle) * yy)
    f = f - f.min()
    return f / max(f.max(), 1e-6)


def photo_layers(rng: np.random.Generator, photo: torch.Tensor, num_layers: int, whole: bool = False):
    """Cumulative soft masks of ``num_layers`` depth levels of a smooth random
    field (spanning a random part of the levels) over the photo: alphas (L, 1, P, P), layer 0 opaque, layer l covers
    every pixel at level >= l with a ~1 px antialiased edge."""
    P = photo.shape[-1]
    # a crop sees part of the scene's depth range: often a few levels, sometimes all
    # (``whole``: all of it, a surface receding through every level)
    span = 1.0 if whole else rng.uniform(0.15, 1.0)
    u = (_smooth_field(rng, P) * span + rng.uniform(0.0, 1.0 - span)) * num_layers
    gy, gx = np.gradient(u)
    grad = np.sqrt(gx**2 + gy**2) + 1e-6
    alphas = np.empty((num_layers, 1, P, P), np.float32)
    alphas[0] = 1.0
    for level in range(1, num_layers):
        alphas[level, 0] = np.clip((u - level) / grad + 0.5, 0, 1)
    return torch.from_numpy(alphas)


def _srgb_to_linear_np(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1).astype(np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def object_mask(rng: np.random.Generator, P: int) -> torch.Tensor:
    """Antialiased mask (P, P) of one foreground object: an organic blob (a
    level set of a smooth random field) or a large geometric shape."""
    if rng.uniform() < 0.6:
        g = int(rng.integers(2, 5))
        coarse = torch.from_numpy(rng.uniform(0, 1, (1, 1, g, g)).astype(np.float32))
        f = F.interpolate(coarse, size=(P, P), mode="bicubic", align_corners=True)[0, 0].numpy()
        level = np.quantile(f, rng.uniform(0.5, 0.85))
        gy, gx = np.gradient(f)
        mask = np.clip((f - level) / (np.sqrt(gx**2 + gy**2) + 1e-6) + 0.5, 0, 1)
        return torch.from_numpy(mask.astype(np.float32))
    mask = np.zeros((P, P), np.float32)
    shape = None
    while shape is None:
        shape = _shape_mask(rng, P, P * rng.uniform(0.12, 0.35))
    m, top, left = shape
    mask[top : top + m.shape[0], left : left + m.shape[1]] = m
    return torch.from_numpy(mask)


def _shape_mask(rng: np.random.Generator, P: int, scale: float):
    """One random antialiased shape: (mask (h, w) float32, top, left)."""
    r = scale
    cy, cx = rng.uniform(-r, P + r, 2)
    kind = rng.choice(["disc", "ellipse", "polygon", "rect"])
    half = int(math.ceil(r * 1.5)) + 2
    top, left = int(max(cy - half, 0)), int(max(cx - half, 0))
    bottom, right = int(min(cy + half, P)), int(min(cx + half, P))
    if bottom <= top or right <= left:
        return None
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    y, x = yy - cy, xx - cx
    theta = rng.uniform(0, np.pi)
    ct, st = np.cos(theta), np.sin(theta)
    xr, yr = ct * x + st * y, -st * x + ct * y
    if kind == "disc":
        sd = r - np.sqrt(x**2 + y**2)
    elif kind == "ellipse":
        a = rng.uniform(0.3, 1.0)
        rho = np.sqrt(xr**2 + (yr / a) ** 2)
        sd = (r - rho) * a  # approximate distance in pixels near the edge
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        normals = theta + 2 * np.pi * np.arange(n) / n
        proj = x[..., None] * np.cos(normals) + y[..., None] * np.sin(normals)
        sd = r * np.cos(np.pi / n) - proj.max(-1)
    else:
        a = rng.uniform(0.15, 1.0)
        sd = np.minimum(r - np.abs(xr), r * a - np.abs(yr))
    mask = np.clip(sd + 0.5, 0, 1).astype(np.float32)
    return mask, top, left


def _texture(rng: np.random.Generator, h: int, w: int, top: int, left: int, noise: list[np.ndarray]) -> np.ndarray:
    """Colour (h, w, 3) sRGB of one shape: flat, gradient, stripes or noise."""
    base = rng.uniform(0, 1, 3).astype(np.float32)
    kind = rng.choice(["flat", "gradient", "stripes", "noise"], p=[0.2, 0.2, 0.25, 0.35])
    if kind == "flat":
        return np.broadcast_to(base, (h, w, 3))
    yy, xx = np.mgrid[top : top + h, left : left + w].astype(np.float32)
    if kind == "gradient":
        other = rng.uniform(0, 1, 3).astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / rng.uniform(20, 200)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        return base + (other - base) * t[..., None]
    if kind == "stripes":
        other = rng.uniform(0, 1, 3).astype(np.float32)
        a, period = rng.uniform(0, np.pi), log_uniform(rng, 2.5, 40)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / period)
        if rng.uniform() < 0.5:
            t = (t > 0.5).astype(np.float32)
        return base + (other - base) * t[..., None]
    field_ = noise[int(rng.integers(len(noise)))][top : top + h, left : left + w]
    amp = rng.uniform(0.1, 0.6)
    return np.clip(base + amp * field_[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32), 0, 1)


def _noise_fields(rng: np.random.Generator, P: int) -> list[np.ndarray]:
    """Zero-mean noise textures at a few scales, (P, P) each, roughly in [-1, 1]."""
    out = []
    for cells in (P, max(1, P // 4), max(1, P // 16)):  # canvases under 16 px: one coarse cell
        coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
        out.append(F.interpolate(coarse, size=(P, P), mode="bicubic", align_corners=False)[0, 0].numpy() * 0.5)
    return out


def dead_leaves(rng: np.random.Generator, P: int, num_layers: int, shapes: tuple[int, int]):
    """Procedural layered scene: straight (not premultiplied) linear colours
    (L, 3, P, P) and alphas (L, 1, P, P); layer 0 an opaque textured background."""
    noise = _noise_fields(rng, P)
    colors = np.zeros((num_layers, P, P, 3), np.float32)
    alphas = np.zeros((num_layers, P, P), np.float32)
    colors[0] = _srgb_to_linear_np(_texture(rng, P, P, 0, 0, noise))
    alphas[0] = 1.0
    n = int(rng.integers(shapes[0], shapes[1] + 1))
    layer_of = np.sort(rng.integers(1, num_layers, n)) if num_layers > 1 else np.zeros(n, int)
    for layer in layer_of:
        # power-law sizes: many small shapes, a few large ones
        scale = P * 0.02 * (1 - rng.uniform()) ** (-1 / 1.5)
        scale = min(scale, P * 0.4)
        shape = _shape_mask(rng, P, scale)
        if shape is None:
            continue
        m, top, left = shape
        h, w = m.shape
        tex = _srgb_to_linear_np(_texture(rng, h, w, top, left, noise))
        c = colors[layer, top : top + h, left : left + w]
        a = alphas[layer, top : top + h, left : left + w]
        c[...] = tex * m[..., None] + c * (1 - m[..., None])
        a[...] = m + a * (1 - m)
    colors = colors / np.maximum(alphas, 1e-6)[..., None]  # un-premultiply
    return torch.from_numpy(colors).permute(0, 3, 1, 2), torch.from_numpy(alphas)[:, None]

