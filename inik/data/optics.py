"""The optics of synthetic defocus (:mod:`.synthetic`): sRGB <-> linear light, the thin-lens
circle of confusion, aperture kernels, and blurring and compositing depth layers."""

from __future__ import annotations

import math

import numpy as np
import torch

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


def fast_size(n: int) -> int:
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
