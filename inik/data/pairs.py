"""Paired (blurry, sharp) datasets read from folders, matched by file name.

Layouts (``find_pairs(root, layout=...)``), folders relative to ``root``:

=========  ==============================  ===========================  =========
layout     blurry folder                   sharp folder                 matching
=========  ==============================  ===========================  =========
dpdd       ``{split}_c/source``            ``{split}_c/target``         one-to-one
realdof    ``source``                      ``target``                   one-to-one
rtf        ``image``                       ``GT``                       one-to-one
generic    ``source``                      ``target``                   one-to-one
lfdof      ``input`` (searched             ``ground_truth``             many-to-one
           recursively)
=========  ==============================  ===========================  =========

``layout="auto"`` picks the first of these whose folders exist. Any pair of
folders can be given directly to :func:`pair_folders`.

One-to-one: a blurry file pairs with the sharp file of the same stem (name
without suffix). Many-to-one (LFDOF, where several refocused inputs share one
all-in-focus target): for a blurry file ``<input>/<sub>/<stem>.<ext>`` the
candidate target stems are tried in this order, and the first that exists wins:

1. the enclosing folder names under the input folder, innermost first
   (``input/0001/5.png`` -> ``0001``): a scene's folder names its target even
   when its slices are numbered like the scenes (``input/0002/0001.png`` is
   scene 0002's, not 0001's);
2. ``stem`` itself;
3. ``stem`` with its last ``_part`` removed, repeatedly
   (``0001_3_2`` -> ``0001_3`` -> ``0001``).

Nothing is ever paired by sort order. A blurry file without a partner, a
sharp file that no blurry file uses, two files with one stem in a folder, a
size mismatch between partners, or an unreadable file raises
:class:`PairingError` (or :class:`~inik.data.io.ImageReadError`) naming the
file(s).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .io import image_to_tensor, list_images, read_finite_image, read_image_info

__all__ = [
    "ImagePair",
    "PairingError",
    "LAYOUTS",
    "find_pairs",
    "resolve_layout",
    "pair_folders",
    "target_stem_candidates",
    "CropFlipRotate",
    "random_transform",
    "PairedImageDataset",
]


class PairingError(ValueError):
    """Blurry and sharp files do not pair up; the message names the file(s)."""


@dataclass(frozen=True)
class ImagePair:
    """One (blurry, sharp) pair. ``name``: the blurry file's path relative to its
    folder, without suffix (unique within a dataset; use it for output names).
    ``size``: (width, height) of both images when pairing read them
    (``check_sizes``), else None."""

    blurry: Path
    sharp: Path
    name: str
    size: tuple[int, int] | None = field(default=None, compare=False)


#: layout -> (blurry folder, sharp folder, many_to_one); "{split}" is filled in.
LAYOUTS = {
    "dpdd": ("{split}_c/source", "{split}_c/target", False),
    "realdof": ("source", "target", False),
    "rtf": ("image", "GT", False),
    "generic": ("source", "target", False),
    "lfdof": ("input", "ground_truth", True),
}


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in out:
            raise PairingError(f"two files with one name in {folder}: {out[key]} and {f}")
        out[key] = f
    return out


def target_stem_candidates(relative_blurry: str) -> list[str]:
    """Target stems tried, in order, for a blurry file in a many-to-one layout.

    ``relative_blurry``: the blurry file's path relative to its folder, without
    suffix, e.g. ``"0001/0001_3_2"``. See the module docstring for the rule."""
    parts = relative_blurry.split("/")
    stem, folders = parts[-1], parts[:-1]
    out = list(reversed(folders)) + [stem]
    while "_" in stem:
        stem = stem.rsplit("_", 1)[0]
        if stem:
            out.append(stem)
    return out


def pair_folders(blurry_dir, sharp_dir, *, many_to_one: bool = False, check_sizes: bool = True) -> list[ImagePair]:
    """Pair the images of two folders by name (rule: module docstring).

    Args:
        blurry_dir, sharp_dir: folders of images (suffixes in
            ``inik.data.io.IMAGE_EXTENSIONS``). With ``many_to_one`` the blurry
            folder is searched recursively.
        many_to_one: several blurry files may share one sharp file (LFDOF).
        check_sizes: read every file's header and require equal sizes.

    Returns:
        Pairs sorted by blurry name.
    """
    blurry_dir, sharp_dir = Path(blurry_dir), Path(sharp_dir)
    blurry = _by_stem(list_images(blurry_dir, recursive=many_to_one), blurry_dir)
    sharp = _by_stem(list_images(sharp_dir), sharp_dir)
    if not blurry:
        nested = [] if many_to_one else list_images(blurry_dir, recursive=True)
        hint = (f" (its subfolders hold {len(nested)}, e.g. {nested[0]}; only the lfdof layout searches "
                 "subfolders)") if nested else ""
        raise PairingError(f"no images in {blurry_dir}{hint}")
    pairs, used = [], set()
    for name, path in sorted(blurry.items()):
        candidates = target_stem_candidates(name) if many_to_one else [name]
        match = next((c for c in candidates if c in sharp), None)
        if match is None:
            tried = ", ".join(repr(c) for c in candidates)
            raise PairingError(f"{path}: no sharp partner in {sharp_dir} (looked for stem {tried})")
        used.add(match)
        pairs.append(ImagePair(path, sharp[match], name))
    unused = sorted(set(sharp) - used)
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise PairingError(f"{sharp[unused[0]]}: no blurry partner in {blurry_dir}{more}")
    if check_sizes:
        sizes: dict[Path, tuple[int, int]] = {}
        for p in pairs:
            for f in (p.blurry, p.sharp):
                if f not in sizes:
                    sizes[f] = read_image_info(f)
            if sizes[p.blurry] != sizes[p.sharp]:
                (wb, hb), (ws, hs) = sizes[p.blurry], sizes[p.sharp]
                raise PairingError(f"size mismatch: {p.blurry} is {wb}x{hb} but its partner {p.sharp} is {ws}x{hs}")
        pairs = [replace(p, size=sizes[p.blurry]) for p in pairs]
    return pairs


def _folder(root: Path, relative: str) -> Path:
    """``root / relative``, each part matched regardless of case when no folder has
    the exact name and exactly one has it in another case (``gt`` for RTF's ``GT``,
    ``Source`` for ``source``)."""
    path = root
    for part in relative.split("/"):
        exact = path / part
        if not exact.is_dir() and path.is_dir():
            same = [c for c in path.iterdir() if c.name.lower() == part.lower() and c.is_dir()]
            exact = same[0] if len(same) == 1 else exact
        path = exact
    return path


def resolve_layout(root, layout: str = "auto", *, split: str = "test") -> str:
    """The layout :func:`find_pairs` reads ``root`` with: ``layout`` itself (checked),
    or for ``"auto"`` the first of :data:`LAYOUTS` whose folders exist."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    if layout == "auto":
        for name, (b, s, _) in LAYOUTS.items():
            if _folder(root, b.format(split=split)).is_dir() and _folder(root, s.format(split=split)).is_dir():
                return name
        expected = "; ".join(f"{n}: {b.format(split=split)} + {s.format(split=split)}"
                             for n, (b, s, _) in LAYOUTS.items())
        raise PairingError(f"{root}: no known dataset layout found (expected folders {expected})")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {sorted(LAYOUTS)}; got {layout!r}")
    return layout


def find_pairs(root, layout: str = "auto", *, split: str = "test", check_sizes: bool = True) -> list[ImagePair]:
    """Pairs of a dataset in one of the known layouts (see :data:`LAYOUTS`).

    Args:
        root: the dataset folder (e.g. the DPDD folder holding ``test_c``).
        layout: a key of :data:`LAYOUTS` or ``"auto"`` (first whose folders exist).
        split: for ``dpdd``: ``train``, ``val`` or ``test``.
        check_sizes: see :func:`pair_folders`.
    """
    root = Path(root)
    layout = resolve_layout(root, layout, split=split)
    b, s, many = LAYOUTS[layout]
    bdir, sdir = _folder(root, b.format(split=split)), _folder(root, s.format(split=split))
    for d in (bdir, sdir):
        if not d.is_dir():
            raise PairingError(f"{d}: folder missing for layout {layout!r}")
    if (root / "radius").is_dir() and not (root / "params.jsonl").exists() and bdir.parent == root:
        raise PairingError(f"{root}: an unfinished synthetic set (radius/ but no params.jsonl, which inik synth "
                           f"writes last): write it again with inik synth --overwrite")
    return pair_folders(bdir, sdir, many_to_one=many, check_sizes=check_sizes)


@dataclass(frozen=True)
class CropFlipRotate:
    """A crop, then optional horizontal/vertical flips, then ``rot90`` quarter
    turns counter-clockwise; applied identically to every image of a pair."""

    top: int
    left: int
    height: int
    width: int
    hflip: bool = False
    vflip: bool = False
    rot90: int = 0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` -> ``(C, h, w)`` (h, w swapped by odd ``rot90``)."""
        out = image[:, self.top : self.top + self.height, self.left : self.left + self.width]
        if self.hflip:
            out = out.flip(-1)
        if self.vflip:
            out = out.flip(-2)
        if self.rot90:
            out = torch.rot90(out, self.rot90, dims=(-2, -1))
        return out.contiguous()


def random_transform(
    rng: np.random.Generator, height: int, width: int, crop: int | None, *, flips: bool = True, rotations: bool = True
) -> CropFlipRotate:
    """Draw the paper's augmentation for an image of ``height x width``: a
    uniformly placed ``crop x crop`` window (whole image if None), horizontal and
    vertical flips with probability 1/2 each, and 0-3 quarter turns (only 0 or 2
    when the window is not square, so output sizes stay fixed)."""
    if crop is None:
        h, w, top, left = height, width, 0, 0
    else:
        if crop > height or crop > width:
            raise ValueError(f"crop {crop} is larger than the image ({width}x{height})")
        h = w = crop
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
    hflip = vflip = False
    rot = 0
    if flips:
        hflip, vflip = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    if rotations:
        rot = int(rng.integers(0, 4)) if h == w else 2 * int(rng.integers(0, 2))
    return CropFlipRotate(top, left, h, w, hflip, vflip, rot)


class PairedImageDataset(torch.utils.data.Dataset):
    """(blurry, sharp) pairs as float32 tensors ``(3, H, W)`` in [0, 1].

    Args:
        pairs: from :func:`find_pairs` / :func:`pair_folders`.
        crop: square crop size in pixels (paper: 256) or None for full images; a
            pair smaller than it is refused here when pairing read its size.
        augment: random crop position, flips and quarter turns (training); when
            False a given ``crop`` is taken from the centre.
        seed: the randomness of item ``i`` in epoch ``e`` comes from
            ``numpy.random.default_rng([seed, e, i])`` only, so results do not
            depend on worker count or order. Call :meth:`set_epoch` per epoch.
        cache: keep decoded images in memory (per worker process).

    Images of any bit depth are read exactly (``inik.data.io.read_image``) and
    converted to RGB; grey is replicated and alpha dropped.
    """

    def __init__(self, pairs, *, crop: int | None = 256, augment: bool = True, seed: int = 0, cache: bool = False):
        self.pairs = list(pairs)
        if crop is not None and (not isinstance(crop, numbers.Integral) or isinstance(crop, bool) or crop < 1):
            raise ValueError(f"crop must be a positive integer size or None; got {crop!r}")
        for pair in self.pairs if crop is not None else ():  # sizes pairing read: no run stops hours in
            if pair.size is not None and crop > min(pair.size):
                raise ValueError(f"{pair.blurry}: crop {crop} is larger than the image ({pair.size[0]}x{pair.size[1]})")
        self.crop, self.augment, self.seed, self.cache = crop, augment, seed, cache
        self.epoch = 0
        self._cache: dict[Path, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path) -> torch.Tensor:
        if path in self._cache:
            return self._cache[path]
        t = image_to_tensor(read_finite_image(path)[0])
        if self.cache:
            self._cache[path] = t
        return t

    def transform(self, index: int, height: int, width: int) -> CropFlipRotate:
        """The transform item ``index`` gets in the current epoch."""
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return random_transform(rng, height, width, self.crop)
        if self.crop is None:
            return CropFlipRotate(0, 0, height, width)
        if self.crop > height or self.crop > width:
            raise ValueError(f"crop {self.crop} is larger than the image ({width}x{height})")
        return CropFlipRotate((height - self.crop) // 2, (width - self.crop) // 2, self.crop, self.crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        blurry, sharp = self._load(pair.blurry), self._load(pair.sharp)
        if blurry.shape != sharp.shape:
            raise PairingError(f"size mismatch: {pair.blurry} is {tuple(blurry.shape)} but {pair.sharp} is "
                               f"{tuple(sharp.shape)}")
        try:
            t = self.transform(index, blurry.shape[1], blurry.shape[2])
        except ValueError as e:
            raise ValueError(f"{pair.blurry}: {e}") from None
        return t(blurry), t(sharp)
