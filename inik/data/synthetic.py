"""Synthetic defocus: layered scenes blurred by a thin-lens camera.

This module holds the datasets and :func:`export_synthetic_pairs`, and re-exports the
generator (:mod:`.synthesizer`), the optics (:mod:`.optics`) and the photo split
(:mod:`.photos`); the scenes are drawn by :mod:`.scenes`.

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
from pathlib import Path

import torch

from .optics import aperture_kernel, blur_and_composite, coc_radius_px, composite, linear_to_srgb, srgb_to_linear
from .photos import PHOTO_PARTS, select_photos, split_photos
from .synthesizer import LAYOUTS as LAYOUTS
from .synthesizer import MAX_SIZE as MAX_SIZE
from .synthesizer import DefocusSample, DefocusSynthesizer, SyntheticConfig
from .synthesizer import parse_layouts as parse_layouts

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
#: most pairs in a set (a bound on the work one call asks for; names run 00000, 00001, ...)
MAX_COUNT = 1_000_000
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
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be in [1, {MAX_COUNT}]; got {count}")
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
    try:
        for i in items:
            s = first if i == 0 else synth.sample([seed, i])
            name = names[i]
            write_image(folder / "source" / f"{name}.png", s.blurry, bit_depth=8, overwrite=True)
            write_image(folder / "target" / f"{name}.png", s.sharp, bit_depth=16, overwrite=True)
            scale = c.max_radius if c.max_radius > 0 else 1.0
            write_image(folder / "radius" / f"{name}.png", s.radius / scale, bit_depth=16, overwrite=True)
            record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in s.params.items()}
            lines.append(json.dumps({"name": name, "seed": [seed, i], "radius_scale": scale, **record}))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted after {len(lines)} of {count} pairs; {folder} holds an unfinished "
                                f"set (no params.jsonl): write it again with --overwrite") from None
    except Exception as exc:  # a photo that cannot be read, a full disk: the set is unfinished all the same
        from ..errors import first_line
        raise ValueError(f"{first_line(exc)}; stopped after {len(lines)} of {count} pairs: {folder} holds an "
                         f"unfinished set (no params.jsonl): write it again with --overwrite") from exc
    keep = {f"{n}.png" for n in names}
    for p in old:
        if p.name not in keep and p != params_path:
            p.unlink(missing_ok=True)
    write_atomically(params_path, ("\n".join(lines) + "\n").encode())
    return names
