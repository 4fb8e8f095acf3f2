"""Synthetic defocus: layered scenes blurred by a thin-lens camera.

Image formation (all in linear light, per sample):

1. **Scene**: ``L`` fronto-parallel layers, back to front. Each has a
   premultiplied colour, an alpha and an inverse depth ``D`` (dioptres,
   1/m; 0 = infinity). Two sources:

   * ``photo``: a sharp photograph (randomly downscaled by 0.5-1x first, so
     that its own softness and noise do not become the target; docs/ARCHITECTURE.md
     section 7) split into layers by a smooth random depth map. Layer ``l``'s
     alpha covers every pixel at layer ``l`` *or nearer* (cumulative masks), so
     content hidden behind a near layer is approximated by the near layer's
     own colour instead of a dark hole. Since those depth edges ignore the
     photo's content, half the scenes also get one or two foreground objects:
     blobs or shapes cut from other photo crops, whose depth edges are their
     own outlines (a subject in front of a background).
   * ``dead_leaves``: procedural (no files): a textured background plane and
     random discs, ellipses, polygons and rectangles with flat, gradient,
     stripe or noise textures, grouped into depth layers; occluded parts of a
     far layer really exist in that layer.

2. **Thin lens**: a point at depth ``d`` seen by a lens of focal length ``f``
   and f-number ``N`` (aperture diameter ``A = f / N``) focused at distance
   ``s`` images to a circle of confusion of diameter
   ``c = A * f * |d - s| / (d * (s - f))`` on the sensor, i.e. a blur radius
   ``r = c / (2 * pixel_pitch)`` pixels, with the pixel pitch
   ``sensor_width / frame_width`` (the frame the crop comes from;
   defaults 36 mm and 1000 px). Equivalently ``r = K * |1/s - 1/d|`` with
   ``K = A f s / (2 p (s - f))``: radius is linear in inverse depth. Per
   sample the focal length, the focus distance and the layer depths are drawn,
   and the aperture is solved for so that the largest radius in the crop
   equals a target drawn from ``[0, max_radius]`` (``radius_power``) - every
   radius up to the cap is covered (real photos at ~1000 px width reach
   12-16 px); the implied f-number is reported. Layers nearer than the focus see the aperture
   point-reflected (it matters for odd-bladed polygons).

3. **Aperture**: an antialiased disc (or, with probability
   ``polygon_prob``, a regular 5-9-bladed polygon with random rotation), its
   edge softened by a random amount (``edge_softness``), one normalised kernel
   per layer radius; a radius below 0.5 px is a delta.

4. **Blur and occlusion**: every layer's premultiplied colour and its alpha
   are blurred with the layer's kernel (one batched FFT), then composited back
   to front: ``out = blur(c * a) + (1 - blur(a)) * out``.

5. **Sensor**: Poisson-Gaussian noise in linear light
   (variance ``shot * x + read**2``), sRGB encoding, 8-bit quantisation.

The sharp target is the scene composited without blur, sRGB-encoded, no
noise. The radius map is the blur radius of the surface visible at each pixel
of the sharp image (composited with the sharp alphas). Every draw comes from
one ``numpy.random.Generator``: a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import list_images, read_image, read_image_info

__all__ = [
    "SyntheticConfig",
    "DefocusSample",
    "DefocusSynthesizer",
    "SyntheticDefocusDataset",
    "SyntheticDefocusStream",
    "coc_radius_px",
    "aperture_kernel",
    "blur_and_composite",
    "composite",
    "srgb_to_linear",
    "linear_to_srgb",
    "split_photos",
    "select_photos",
    "PHOTO_PARTS",
    "export_synthetic_pairs",
]


# ---------------------------------------------------------------- colour


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB encoding (IEC 61966-2-1)."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


# ---------------------------------------------------------------- optics


def coc_radius_px(depth_m, focus_m: float, focal_length_mm: float, f_number: float, pixel_pitch_mm: float):
    """Thin-lens circle-of-confusion radius in pixels.

    Args:
        depth_m: object distance(s) in metres (float or numpy array; ``inf`` ok).
        focus_m: focus distance in metres (> focal length).
        focal_length_mm: lens focal length in mm.
        f_number: aperture f-number N (aperture diameter = f / N).
        pixel_pitch_mm: sensor pixel size in mm.

    Returns:
        ``A f |d - s| / (d (s - f)) / 2 / pitch``, same shape as ``depth_m``.
    """
    f = focal_length_mm
    s = focus_m * 1000.0
    if s <= f:
        raise ValueError(f"focus distance {focus_m} m must exceed the focal length {focal_length_mm} mm")
    inv_d = 1.0 / (np.asarray(depth_m, dtype=np.float64) * 1000.0)
    aperture = f / f_number
    return aperture * f * s / (s - f) * np.abs(1.0 / s - inv_d) / (2.0 * pixel_pitch_mm)


def aperture_kernel(
    radius: float, blades: int = 0, rotation: float = 0.0, size: int | None = None, softness: float = 0.0
) -> torch.Tensor:
    """Normalised antialiased aperture PSF, float32 ``(size, size)``, centred.

    Args:
        radius: blur radius in pixels (circumradius for polygons); below 0.5
            the kernel is a delta.
        blades: 0 for a disc, else a regular polygon with this many sides (>= 3).
        rotation: polygon rotation in radians.
        size: odd kernel size; default ``2 * ceil(radius) + 1`` (1 for a delta).
        softness: edge ramp width as a fraction of the diameter (0: a sharp,
            antialiased edge; real lenses' PSFs are softer than ideal discs).

    The profile is ``clip((r + 0.5 - distance) / w, 0, 1)``, ``w = max(1, 2 *
    softness * r)``, with the Euclidean distance (disc) or the polygon's edge
    distance; for ``w = 1`` it is the pixel coverage of the ideal aperture.
    The support never exceeds ``r + 0.5``.
    """
    if size is None:
        size = 1 if radius < 0.5 else 2 * math.ceil(radius) + 1
    if size % 2 != 1:
        raise ValueError(f"size must be odd; got {size}")
    c = size // 2
    if radius < 0.5:
        k = torch.zeros(size, size)
        k[c, c] = 1.0
        return k
    axis = torch.arange(size, dtype=torch.float64) - c
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    ramp = max(1.0, 2.0 * softness * radius)
    if blades:
        if blades < 3:
            raise ValueError(f"blades must be 0 (disc) or >= 3; got {blades}")
        normals = rotation + math.pi / blades + 2 * math.pi * torch.arange(blades, dtype=torch.float64) / blades
        proj = xx[..., None] * torch.cos(normals) + yy[..., None] * torch.sin(normals)
        dist = proj.max(dim=-1).values
        edge = radius * math.cos(math.pi / blades)
        k = ((edge + 0.5 - dist) / ramp).clamp(0, 1)
    else:
        k = ((radius + 0.5 - torch.sqrt(xx**2 + yy**2)) / ramp).clamp(0, 1)
    return (k / k.sum()).float()


def _fast_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (FFT-friendly)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def blur_and_composite(
    colors: torch.Tensor,
    alphas: torch.Tensor,
    radii,
    *,
    blades: int = 0,
    rotation: float = 0.0,
    softness: float = 0.0,
    reflected=None,
) -> torch.Tensor:
    """Blur each layer with its aperture kernel and composite back to front.

    Args:
        colors: premultiplied linear colour ``(L, C, H, W)``, layer 0 at the back.
        alphas: ``(L, 1, H, W)`` in [0, 1]; layer 0 should be opaque.
        radii: ``L`` blur radii in pixels.
        blades, rotation, softness: aperture shape (see :func:`aperture_kernel`).
        reflected: ``L`` booleans: layer in front of the focus plane (aperture
            point-reflected); default all False.

    Returns:
        ``(C, H, W)``: ``out = blur(c) + (1 - blur(a)) * out`` over layers.
        The blur is circular (FFT): keep content that matters at least
        ``ceil(max radius)`` pixels from the border.
    """
    L, C, H, W = colors.shape
    radii = [float(r) for r in radii]
    reflected = [False] * L if reflected is None else list(reflected)
    idx = [i for i, r in enumerate(radii) if r >= 0.5]
    if idx:
        size = 2 * math.ceil(max(radii[i] for i in idx)) + 1
        if size > min(H, W):
            raise ValueError(f"blur radius {max(radii)} too large for a {H}x{W} canvas")
        kernels = torch.zeros(len(idx), H, W)
        for j, i in enumerate(idx):
            turn = rotation + (math.pi if reflected[i] else 0.0)
            kernels[j, :size, :size] = aperture_kernel(radii[i], blades, turn, size, softness)
        kspec = torch.fft.rfft2(torch.roll(kernels, shifts=(-(size // 2), -(size // 2)), dims=(-2, -1)))[:, None]
        colors, alphas = colors.clone(), alphas.clone()
        colors[idx] = torch.fft.irfft2(torch.fft.rfft2(colors[idx]) * kspec, s=(H, W))
        alphas[idx] = torch.fft.irfft2(torch.fft.rfft2(alphas[idx]) * kspec, s=(H, W))
    return composite(colors, alphas)


def composite(colors: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Back-to-front "over" of premultiplied layers: ``(L, C, H, W)`` colours and
    ``(L, 1, H, W)`` alphas (layer 0 at the back) -> ``(C, H, W)``."""
    out = colors[0]
    for i in range(1, colors.shape[0]):
        out = colors[i] + (1 - alphas[i]) * out
    return out


# ---------------------------------------------------------------- config and samples


@dataclass
class SyntheticConfig:
    """Parameters of the generator (units in brackets).

    size: output crop side [px].
    max_radius: largest blur radius [px].
    radius_power: the largest radius in a crop is ``max_radius * u **
        radius_power``, u uniform in [0, 1]: 1 = uniform; the default 0.5
        favours large blur, which the other layers' radii then spread below.
    num_layers: depth layers per scene.
    sensor_width_mm, frame_width_px: the pixel pitch is their ratio: the crop
        is thought of as part of a frame this wide.
    focal_length_mm: range of the focal length [mm], log-uniform.
    inverse_depth: range of scene inverse depths [1/m] (3 = 0.33 m; must stay
        below 1000 / focal length); the farthest layer is drawn from the first
        half of the range, the nearest from the second, the others between; the
        focus is on a visible layer (``in_focus_prob``) or uniform between.
    in_focus_prob: probability that the focus lies exactly on one layer
        (an in-focus region, as in most real photos).
    polygon_prob: probability of a polygonal (5-9 bladed) aperture.
    edge_softness: range of the aperture edge softness (uniform; see
        :func:`aperture_kernel`).
    noise_prob: probability of sensor noise; shot: range of the Poisson gain
        (variance per unit linear signal), log-uniform; read: range of the
        Gaussian read-noise sigma, log-uniform.
    quantize_bits: bits of the blurry output (8) or None for float.
    photo_scale: range of the random downscale of source photos.
    dead_leaves_shapes: range of the number of shapes per procedural scene.
    photo_prob: with photos available, the fraction of photo scenes (the rest
        are procedural dead leaves).
    object_prob, max_objects: probability that a photo scene gets 1 to
        ``max_objects`` foreground objects (blobs or shapes cut from other
        photo crops) in front of its depth layers.
    layouts: the depth layouts a sample is drawn from, one per sample
        (uniformly): "random" (the scene and focus above), "subject" (a sharp
        foreground object before a blurred background), "reverse" (focus on
        the background, the objects blurred), "slanted" (one receding surface
        spanning the depth range, focus within it), "small-sharp" (focus on
        the smallest visible layer). Every layout but "random" draws the
        crop's largest radius from the upper part of the range (strong blur).
    """

    size: int = 256
    max_radius: float = 16.0
    radius_power: float = 0.5
    num_layers: int = 8
    sensor_width_mm: float = 36.0
    frame_width_px: int = 1000
    focal_length_mm: tuple[float, float] = (24.0, 100.0)
    inverse_depth: tuple[float, float] = (0.0, 3.0)
    in_focus_prob: float = 0.6
    polygon_prob: float = 0.25
    edge_softness: tuple[float, float] = (0.0, 0.3)
    noise_prob: float = 0.8
    shot: tuple[float, float] = (1e-4, 3e-3)
    read: tuple[float, float] = (2e-4, 4e-3)
    quantize_bits: int | None = 8
    photo_scale: tuple[float, float] = (0.5, 1.0)
    dead_leaves_shapes: tuple[int, int] = (20, 70)
    photo_prob: float = 1.0
    object_prob: float = 0.5
    max_objects: int = 2
    layouts: tuple[str, ...] = ("random",)

    @property
    def pad(self) -> int:
        """Margin [px] rendered around the crop so that blur near its border
        sees real content."""
        return math.ceil(self.max_radius) + 1

    @property
    def canvas(self) -> int:
        """Side [px] of the rendered canvas (FFT-friendly, >= size + 2 pad)."""
        return _fast_size(self.size + 2 * self.pad)


@dataclass
class DefocusSample:
    """One synthetic pair. ``blurry``, ``sharp``: float32 ``(3, S, S)`` sRGB in
    [0, 1]; ``radius``: float32 ``(1, S, S)``, blur radius [px] of the surface
    seen in the sharp image; ``params``: the drawn scene and camera values."""

    blurry: torch.Tensor
    sharp: torch.Tensor
    radius: torch.Tensor
    params: dict = field(default_factory=dict)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


# ---------------------------------------------------------------- scenes


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


def _photo_layers(rng: np.random.Generator, photo: torch.Tensor, num_layers: int, whole: bool = False):
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


def _object_mask(rng: np.random.Generator, P: int) -> torch.Tensor:
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
        a, period = rng.uniform(0, np.pi), _log_uniform(rng, 2.5, 40)
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


def _dead_leaves(rng: np.random.Generator, P: int, num_layers: int, shapes: tuple[int, int]):
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


# ---------------------------------------------------------------- photos


class _PhotoCache:
    """Decoded photos, least recently used dropped beyond ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.items, self.bytes = max_bytes, OrderedDict(), 0

    def get(self, path: Path) -> np.ndarray:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        img, info = read_image(path, mode=None)
        if info.has_alpha:
            img, alpha = img[:, :, :-1], img[:, :, -1:]
            if alpha.size and alpha.min() < 1:
                warnings.warn(f"{path}: a photo with transparent pixels; they are composited over mid grey "
                              f"(what a transparent pixel stores is not scene content)", stacklevel=2)
                img = img * alpha + 0.5 * (1 - alpha)
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        img = np.clip(img, 0, 1)  # float TIFFs may hold values outside [0, 1]
        # uint16 holds 8- and 16-bit codes exactly at half the size of float32 (float photos: 16 bits)
        arr = np.round(img * 255).astype(np.uint8) if info.bit_depth == 8 else np.round(img * 65535).astype(np.uint16)
        self.items[path] = arr
        self.bytes += arr.nbytes
        while self.bytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes
        return arr


def split_photos(photos, held_out: float = 0.1, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split photos into (training, held-out) lists by a seeded permutation, so
    that a held-out synthetic set shares no source photo with training. At least
    one photo is held out when there are two or more.

    The permutation is over the sorted list: the same files give the same split
    wherever the folder lies, but adding or removing a photo reshuffles it (one
    more photo among 100 moves 4 of the 10 held-out ones into training). Keep the
    folder as it was when the model was trained (the default model: the 310
    photos of ``../shared/data/sharp``, docs/MODEL_CARD.md) before scoring a held-out set."""
    photos = sorted(Path(p) for p in photos)
    order = np.random.default_rng(seed).permutation(len(photos))
    n = int(round(held_out * len(photos)))
    if held_out > 0 and n == 0 and len(photos) >= 2:  # a few photos: still hold one out
        n = 1
    held = sorted(photos[i] for i in order[:n])
    train = sorted(photos[i] for i in order[n:])
    return train, held


PHOTO_PARTS = ("train", "held-out", "all")
#: The largest crop side [px]: a 4096-px sample renders about 3 GB of layers and FFTs.
MAX_SIZE = 4096
LAYOUTS = ("random", "subject", "reverse", "slanted", "small-sharp")


def select_photos(folder, part: str = "train") -> list[Path]:
    """The sharp photos of ``folder`` (searched recursively) in one part of the
    split that ``inik train`` uses for synthetic data: ``"train"`` (90%),
    ``"held-out"`` (the other 10%, :func:`split_photos` with seed 0) or
    ``"all"``. An evaluation set made from ``"held-out"`` shares no photo with
    training. ValueError when the folder holds no images."""
    if part not in PHOTO_PARTS:
        raise ValueError(f"part must be one of {', '.join(PHOTO_PARTS)}; got {part!r}")
    found = list_images(folder, recursive=True)
    if not found:
        raise ValueError(f"{folder}: no images found")
    if part == "all":
        return found
    train, held = split_photos(found, held_out=0.1, seed=0)
    return held if part == "held-out" else train


# ---------------------------------------------------------------- generator


class DefocusSynthesizer:
    """Draws :class:`DefocusSample` s.

    Args:
        photos: None (procedural dead leaves only), a folder (searched
            recursively) or a list of sharp photo files. Photos smaller than
            the canvas (``config.canvas`` px) are skipped with a warning.
        config: a :class:`SyntheticConfig`.
        cache_bytes: memory for decoded photos (per process).
    """

    def __init__(self, photos=None, config: SyntheticConfig | None = None, *, cache_bytes: int = 1 << 30):
        self.config = config or SyntheticConfig()
        c = self.config
        if not 8 <= c.size <= MAX_SIZE:
            raise ValueError(f"size must be from 8 to {MAX_SIZE}; got {c.size}")
        if not (math.isfinite(c.max_radius) and c.max_radius >= 0) or c.num_layers < 1:
            raise ValueError(f"need max_radius >= 0 and num_layers >= 1; got {c.max_radius}, {c.num_layers}")
        for name in ("in_focus_prob", "polygon_prob", "noise_prob", "photo_prob", "object_prob"):
            if not 0.0 <= getattr(c, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]; got {getattr(c, name)}")
        lo, hi = c.photo_scale
        if not 0.0 < lo <= hi <= 1.0:  # photos are only ever downscaled: their own softness is not the target
            raise ValueError(f"photo_scale must be a range within (0, 1]; got {c.photo_scale}")
        if c.max_objects < 0:
            raise ValueError(f"max_objects must be >= 0; got {c.max_objects}")
        if isinstance(c.layouts, str) or not c.layouts or not set(c.layouts) <= set(LAYOUTS):
            raise ValueError(f"layouts must be a non-empty sequence of {LAYOUTS}; got {c.layouts!r}")
        self.photos: list[Path] = []
        self.photo_sizes: list[tuple[int, int]] = []
        if photos is not None:
            paths = (list_images(photos, recursive=True) if isinstance(photos, (str, Path))
                     else [Path(p) for p in photos])
            small = []
            for p in paths:
                w, h = read_image_info(p)
                if min(w, h) >= c.canvas:
                    self.photos.append(p)
                    self.photo_sizes.append((w, h))
                else:
                    small.append(p)
            if small:
                warnings.warn(f"{len(small)} photo(s) smaller than {c.canvas} px skipped, e.g. {small[0]}",
                              stacklevel=2)
            if not self.photos:
                raise ValueError(f"no usable photos (need at least {c.canvas}x{c.canvas} px) in {photos}")
        self._cache = _PhotoCache(cache_bytes)

    def _photo_crop(self, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        """A random (3, P, P) sRGB crop of a random photo, downscaled by a random
        factor in ``photo_scale`` (limited by the photo's size), flipped/turned;
        and a dict saying where it came from."""
        P = self.config.canvas
        i = int(rng.integers(len(self.photos)))
        w, h = self.photo_sizes[i]
        lo, hi = self.config.photo_scale
        scale = max(rng.uniform(lo, hi), P / min(w, h))
        region = min(int(math.ceil(P / scale)), min(w, h))
        top, left = int(rng.integers(0, h - region + 1)), int(rng.integers(0, w - region + 1))
        arr = self._cache.get(self.photos[i])
        crop = arr[top : top + region, left : left + region]
        t = torch.from_numpy(crop.astype(np.float32) / (65535.0 if crop.dtype == np.uint16 else 255.0)).permute(2, 0, 1)
        if region != P:
            t = F.interpolate(t[None], size=(P, P), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        t = torch.rot90(t, k, dims=(1, 2))
        if flip:
            t = t.flip(-1)
        return t.contiguous(), {"photo": str(self.photos[i]), "photo_scale": P / region,
                                "photo_box": (top, left, region),
                                "photo_turn": k, "photo_flip": flip}

    def _camera(self, rng: np.random.Generator, present: np.ndarray, L: int, params: dict,
                layout: str = "random", visible: np.ndarray | None = None):
        """Inverse depths, focus and lens for L layers; radii [px] per layer.
        ``present``: which layers are visible in the crop (for the radius target);
        ``visible``: the fraction of the crop each layer shows (for ``layout``)."""
        c = self.config
        dlo, dhi = c.inverse_depth
        mid = 0.5 * (dlo + dhi)
        far, near = rng.uniform(dlo, mid), rng.uniform(mid, dhi)
        inv_depth = np.sort(rng.uniform(far, near, L))
        inv_depth[0], inv_depth[-1] = far, near
        choices = np.flatnonzero(present)
        if layout != "random" and len(choices):  # focus exactly on the layout's layer
            if layout == "subject":
                layer = choices[-1]  # the nearest visible layer
            elif layout == "reverse":
                layer = choices[0]
            elif layout == "small-sharp":
                layer = choices[int(np.argmin(visible[choices]))]
            else:
                layer = int(rng.choice(choices))
            inv_focus = float(inv_depth[layer])
        elif rng.uniform() < c.in_focus_prob:
            inv_focus = float(inv_depth[int(rng.choice(choices))])
        else:
            inv_focus = rng.uniform(far, near)
        focal = _log_uniform(rng, *c.focal_length_mm)
        inv_focus = max(inv_focus, 0.01)  # focus at 100 m at most (finite for the lens formula)
        target = c.max_radius * rng.uniform(0.0 if layout == "random" else 0.4, 1.0) ** c.radius_power
        delta = np.abs(inv_depth - inv_focus)
        spread = float(delta[present].max()) if present.any() else 0.0
        pitch = c.sensor_width_mm / c.frame_width_px
        if spread < 1e-9:
            radii = np.zeros(L)
            f_number = float("inf")
        else:
            K = target / spread  # px * m
            s_mm = 1000.0 / inv_focus
            aperture = 2 * pitch * K * 1000.0 * (s_mm - focal) / (focal * s_mm)  # mm
            f_number = focal / aperture if aperture > 0 else float("inf")
            with np.errstate(divide="ignore"):
                depths = np.where(inv_depth > 0, 1.0 / np.maximum(inv_depth, 1e-12), np.inf)
            radii = (coc_radius_px(depths, 1.0 / inv_focus, focal, f_number, pitch) if np.isfinite(f_number)
                     else np.zeros(L))
        radii = np.minimum(radii, c.max_radius)
        params.update(
            inverse_depth=inv_depth.tolist(),
            focus_m=1.0 / inv_focus,
            focal_length_mm=focal,
            f_number=f_number,
            pixel_pitch_mm=pitch,
            target_radius=target,
            radii=radii.tolist(),
        )
        return radii, inv_depth < inv_focus - 1e-12  # layers farther than focus: not reflected

    def sample(self, seed) -> DefocusSample:
        """The sample for ``seed`` (an int or a sequence of ints, as for
        ``numpy.random.default_rng``); same seed, same sample."""
        rng = np.random.default_rng(seed)
        c = self.config
        P, S, pad = c.canvas, c.size, (c.canvas - c.size) // 2
        L = c.num_layers
        params: dict = {}
        # (a draw only when there is a choice: sets made before layouts existed stay the same)
        layout = c.layouts[int(rng.integers(len(c.layouts)))] if len(c.layouts) > 1 else c.layouts[0]
        if layout != "random":
            params["layout"] = layout
        if self.photos and rng.uniform() < c.photo_prob:
            photo, where = self._photo_crop(rng)
            params.update(where)
            alphas = _photo_layers(rng, photo, L, whole=layout == "slanted")
            colors = srgb_to_linear(photo)[None].expand(L, -1, -1, -1)
            params["content"] = "photo"
            with_objects = c.max_objects and rng.uniform() < c.object_prob
            n_objects = int(rng.integers(1, c.max_objects + 1)) if with_objects else 0
            if layout in ("subject", "reverse"):  # these need a foreground object
                n_objects = max(n_objects, 1)
            elif layout == "slanted":
                n_objects = 0
            if n_objects:
                # foreground objects cut from other crops: depth edges that follow content edges
                crops, masks, sources = [], [], []
                for _ in range(n_objects):
                    crop, where = self._photo_crop(rng)
                    crops.append(srgb_to_linear(crop))
                    masks.append(_object_mask(rng, P))
                    sources.append(where["photo"])
                colors = torch.cat([colors, torch.stack(crops)])
                alphas = torch.cat([alphas, torch.stack(masks)[:, None]])
                L += n_objects
            params["objects"] = n_objects
            if n_objects:
                params["object_photos"] = sources
        else:
            colors, alphas = _dead_leaves(rng, P, L, c.dead_leaves_shapes)
            params["content"] = "dead_leaves"
            params["objects"] = 0
        inner = alphas[:, 0, pad : pad + S, pad : pad + S]
        # a layer is visible where it is not covered by the layers in front of it
        cover = torch.zeros_like(inner[0])
        present = np.zeros(L, bool)
        visible = np.zeros(L)
        for i in range(L - 1, -1, -1):
            shown = inner[i] * (1 - cover)
            present[i] = bool((shown > 0.05).any())
            visible[i] = float(shown.mean())
            cover = inner[i] + cover * (1 - inner[i])
        radii, farther = self._camera(rng, present, L, params, layout, visible)
        blades = int(rng.integers(5, 10)) if rng.uniform() < c.polygon_prob else 0
        rotation = float(rng.uniform(0, 2 * np.pi))
        softness = float(rng.uniform(*c.edge_softness))
        params.update(blades=blades, rotation=rotation, softness=softness)

        premult = colors * alphas  # linear light
        blurred = blur_and_composite(premult, alphas, radii, blades=blades, rotation=rotation, softness=softness,
                                     reflected=~farther)
        sharp_lin = composite(premult, alphas)
        radius_map = composite(torch.as_tensor(radii, dtype=torch.float32)[:, None, None, None] * alphas, alphas)

        crop = (slice(None), slice(pad, pad + S), slice(pad, pad + S))
        blurred, sharp_lin, radius_map = blurred[crop], sharp_lin[crop], radius_map[crop]
        if rng.uniform() < c.noise_prob:
            shot, read = _log_uniform(rng, *c.shot), _log_uniform(rng, *c.read)
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            std = torch.sqrt(shot * blurred.clamp_min(0) + read**2)
            blurred = blurred + std * torch.randn(blurred.shape, generator=gen)
            params.update(shot=shot, read=read)
        else:
            params.update(shot=0.0, read=0.0)
        blurry = linear_to_srgb(blurred)
        if c.quantize_bits:
            levels = 2**c.quantize_bits - 1
            blurry = torch.round(blurry * levels) / levels
        sharp = linear_to_srgb(sharp_lin)
        return DefocusSample(blurry.contiguous(), sharp.contiguous(), radius_map.contiguous(), params)


# ---------------------------------------------------------------- datasets


class SyntheticDefocusDataset(torch.utils.data.Dataset):
    """Indexed synthetic pairs: item ``i`` is ``synthesizer.sample([seed, i])``.

    Args:
        photos, config: as for :class:`DefocusSynthesizer`.
        length: number of items (any size; items are made on demand).
        seed: base seed; a held-out set uses another seed (and other photos,
            see :func:`split_photos`).

    Returns per item ``(blurry, sharp)``: float32 ``(3, S, S)`` in [0, 1].
    """

    def __init__(self, photos=None, config: SyntheticConfig | None = None, *, length: int = 100_000, seed: int = 0,
                 cache_bytes: int = 1 << 30):
        self.synth = DefocusSynthesizer(photos, config, cache_bytes=cache_bytes)
        self.length, self.seed = int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        s = self.synth.sample([self.seed, int(index)])
        return s.blurry, s.sharp


class SyntheticDefocusStream(torch.utils.data.IterableDataset):
    """Endless synthetic pairs ``(blurry, sharp)``, float32 ``(3, S, S)``.

    Worker ``k`` of ``n`` (DataLoader) yields items ``k, k + n, k + 2n, ...``
    starting at ``start``; item ``i`` is ``synthesizer.sample([seed, i])``, the
    same as ``SyntheticDefocusDataset(..., seed=seed)[i]``.
    """

    def __init__(self, photos=None, config: SyntheticConfig | None = None, *, seed: int = 0, start: int = 0,
                 cache_bytes: int = 1 << 30):
        self.synth = DefocusSynthesizer(photos, config, cache_bytes=cache_bytes)
        self.seed, self.start = int(seed), int(start)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + k
        while True:
            s = self.synth.sample([self.seed, i])
            yield s.blurry, s.sharp
            i += n


_SET_FOLDERS = ("source", "target", "radius")
_SET_FILE = re.compile(r"\d{5,}\.png")


def _existing_set_files(folder: Path) -> list[Path]:
    """The files of a synthetic set already in ``folder``; FileExistsError for any
    other file in its source/target/radius folders (never deleted, and find_pairs
    would pair it with the set)."""
    found = []
    for sub in _SET_FOLDERS:
        d = folder / sub
        if d.exists() and not d.is_dir():
            raise FileExistsError(f"{d}: exists and is not a folder")
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if p.name.startswith("."):
                continue
            if not (_SET_FILE.fullmatch(p.name) and p.is_file()):
                raise FileExistsError(f"{p}: not a file of a synthetic set; export into a new or empty folder")
            found.append(p)
    params = folder / "params.jsonl"
    if params.exists():
        found.append(params)
    return found


def export_synthetic_pairs(
    folder,
    count: int,
    photos=None,
    config: SyntheticConfig | None = None,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> list:
    """Write ``count`` synthetic pairs as a fixed evaluation set in the generic
    ``source``/``target`` layout (readable with ``inik.data.find_pairs``).

    Files: ``source/NNNNN.png`` (blurry, 8-bit), ``target/NNNNN.png`` (sharp,
    16-bit, so the target is not quantised), ``radius/NNNNN.png`` (blur radius
    map, 16-bit, value = radius / max_radius) and ``params.jsonl`` (one JSON
    object per pair, in order, with the map's ``radius_scale`` = max_radius), written last: a folder without it holds an
    unfinished set. Item ``i`` is ``sample([seed, i])``, as in
    :class:`SyntheticDefocusDataset`, so the same arguments give the same set.
    Returns the pairs' names.

    A folder that already holds a set is refused (FileExistsError) unless
    ``overwrite``, which replaces the whole set - files of a larger earlier set
    included, which would otherwise be scored with the new one. Any other file
    in source/, target/ or radius/ is refused either way, before anything is
    written.
    """
    import json

    from .io import write_atomically, write_image

    count = operator.index(count)
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    synth = DefocusSynthesizer(photos, config)
    c = synth.config
    old = _existing_set_files(folder) if folder.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{folder} already holds a synthetic set ({old[0]}); pass overwrite=True "
                              f"(--overwrite) to replace it")
    names = [f"{i:05d}" for i in range(count)]
    first = synth.sample([seed, 0])  # what fails for lack of memory fails before anything is written
    params_path = folder / "params.jsonl"
    params_path.unlink(missing_ok=True)  # the set is unfinished until it is written again
    for sub in _SET_FOLDERS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    items = range(count)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="synth", unit="pair")
    for i in items:
        s = first if i == 0 else synth.sample([seed, i])
        name = names[i]
        write_image(folder / "source" / f"{name}.png", s.blurry, bit_depth=8, overwrite=True)
        write_image(folder / "target" / f"{name}.png", s.sharp, bit_depth=16, overwrite=True)
        scale = c.max_radius if c.max_radius > 0 else 1.0
        write_image(folder / "radius" / f"{name}.png", s.radius / scale, bit_depth=16, overwrite=True)
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in s.params.items()}
        lines.append(json.dumps({"name": name, "seed": [seed, i], "radius_scale": scale, **record}))
    keep = {f"{n}.png" for n in names}
    for p in old:
        if p.name not in keep and p != params_path:
            p.unlink(missing_ok=True)
    write_atomically(params_path, ("\n".join(lines) + "\n").encode())
    return names
