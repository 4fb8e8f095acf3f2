"""Sharp photos as the source of synthetic scenes (:mod:`.synthetic`): a cache of decoded
photos, and the seeded train/held-out split that keeps evaluation photos out of training."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .io import list_images, read_finite_image


class PhotoCache:
    """Decoded photos, least recently used dropped beyond ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.items, self.bytes = max_bytes, OrderedDict(), 0

    def get(self, path: Path) -> np.ndarray:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        img, info = read_finite_image(path, mode=None)
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
