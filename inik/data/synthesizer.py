"""The synthetic defocus generator (:mod:`.synthetic` describes the image formation):
:class:`SyntheticConfig` and :class:`DefocusSynthesizer`, which draws one scene and camera per seed."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import list_images, read_image_info
from .optics import blur_and_composite, coc_radius_px, composite, fast_size, linear_to_srgb, srgb_to_linear
from .photos import PhotoCache
from .scenes import dead_leaves, log_uniform, object_mask, photo_layers

#: The largest crop side [px]: a 4096-px sample renders about 3 GB of layers and FFTs.
MAX_SIZE = 4096
LAYOUTS = ("random", "subject", "reverse", "slanted", "small-sharp")


def parse_layouts(text: str) -> tuple[str, ...]:
    """Comma-separated layout names (spaces allowed) -> a tuple of :data:`LAYOUTS`; a
    ValueError reading "a comma-separated list of ...; got ..." otherwise."""
    names = tuple(t.strip() for t in text.split(","))
    if not set(names) <= set(LAYOUTS):
        raise ValueError(f"a comma-separated list of {', '.join(LAYOUTS)}; got {text!r}")
    return names


@dataclass
class SyntheticConfig:
    """Parameters of the generator (units in brackets).

    size: output crop side [px].
    max_radius: largest blur radius [px].
    radius_power: the largest radius in a crop is ``max_radius * u **
        radius_power``, u uniform in [0, 1]: 1 = uniform; the default 0.5
        favours large blur, which the other layers' radii then spread below.
    narrow_prob, narrow_radius: the fraction of crops whose largest radius is
        drawn the same way up to ``narrow_radius`` instead (a wide range that
        keeps small and no blur common) [px].
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
    narrow_prob: float = 0.0
    narrow_radius: float = 12.0
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
        return fast_size(self.size + 2 * self.pad)


@dataclass
class DefocusSample:
    """One synthetic pair. ``blurry``, ``sharp``: float32 ``(3, S, S)`` sRGB in
    [0, 1]; ``radius``: float32 ``(1, S, S)``, blur radius [px] of the surface
    seen in the sharp image; ``params``: the drawn scene and camera values."""

    blurry: torch.Tensor
    sharp: torch.Tensor
    radius: torch.Tensor
    params: dict = field(default_factory=dict)


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
        if not (math.isfinite(c.narrow_radius) and c.narrow_radius >= 0):
            raise ValueError(f"narrow_radius must be >= 0; got {c.narrow_radius}")
        for name in ("in_focus_prob", "polygon_prob", "noise_prob", "photo_prob", "object_prob", "narrow_prob"):
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
            if not self.photos:
                where = photos if isinstance(photos, (str, Path)) else f"the {len(paths)} given"
                raise ValueError(f"no usable photos in {where}: they need at least {c.canvas}x{c.canvas} px"
                                 + (f" ({len(small)} smaller, e.g. {small[0]})" if small else ""))
            if small:
                warnings.warn(f"{len(small)} photo(s) smaller than {c.canvas} px skipped, e.g. {small[0]}",
                              stacklevel=2)
        self._cache = PhotoCache(cache_bytes)

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
        focal = log_uniform(rng, *c.focal_length_mm)
        inv_focus = max(inv_focus, 0.01)  # focus at 100 m at most (finite for the lens formula)
        top = c.max_radius  # (a draw only with a narrow share: sets made without one stay the same)
        if c.narrow_prob and rng.uniform() < c.narrow_prob:
            top = min(c.narrow_radius, c.max_radius)
            params["narrow"] = True
        target = top * rng.uniform(0.0 if layout == "random" else 0.4, 1.0) ** c.radius_power
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
            alphas = photo_layers(rng, photo, L, whole=layout == "slanted")
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
                    masks.append(object_mask(rng, P))
                    sources.append(where["photo"])
                colors = torch.cat([colors, torch.stack(crops)])
                alphas = torch.cat([alphas, torch.stack(masks)[:, None]])
                L += n_objects
            params["objects"] = n_objects
            if n_objects:
                params["object_photos"] = sources
        else:
            colors, alphas = dead_leaves(rng, P, L, c.dead_leaves_shapes)
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
            shot, read = log_uniform(rng, *c.shot), log_uniform(rng, *c.read)
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
