"""The training data: the run's deterministic sample stream, its per-rank batches,
and the validation pairs."""

from __future__ import annotations

import logging
import sys

import torch

from ..metrics import SSIM_WINDOW
from .config import TrainConfig

log = logging.getLogger("inik")


class SampleStream(torch.utils.data.Dataset):
    """Sample n of the run (n = 0, 1, 2, ...) as (blurry, sharp) (3, S, S) tensors.

    Paired datasets: epoch e = n // len, a permutation seeded by (seed, e), and the
    dataset's own augmentation seeded by (seed, e, index). Synthetic: the
    generator's sample for seed (seed, n).
    """

    def __init__(self, source, seed: int):
        self.source, self.seed = source, seed
        self.paired = hasattr(source, "set_epoch")

    def __len__(self):  # indexed by sample number, not by epoch
        return sys.maxsize

    def __getitem__(self, n: int):
        if not self.paired:
            return self.source[n]
        size = len(self.source)
        epoch, pos = divmod(int(n), size)
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        self.source.set_epoch(epoch)
        return self.source[int(perm[pos])]


class BatchSampler(torch.utils.data.Sampler):
    """Lists of sample numbers, one list per iteration from ``start``, for this rank."""

    def __init__(self, start: int, iters: int, batch: int, rank: int, world: int):
        self.start, self.iters, self.batch, self.rank, self.world = start, iters, batch, rank, world

    def __iter__(self):
        for it in range(self.start, self.iters):
            first = (it * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))

    def __len__(self):
        return max(0, self.iters - self.start)


def _synthetic(cfg: TrainConfig, held_out: bool, seed: int):
    """Synthetic pairs from cfg.data's sharp photos (90/10 train/held-out split by
    file) or, without photos, procedural scenes."""
    from ..data.synthetic import SyntheticConfig, SyntheticDefocusDataset, select_photos
    photos = None
    if cfg.dataset == "synthetic" and cfg.data:
        try:
            photos = select_photos(cfg.data, "held-out" if held_out else "train")
        except ValueError as exc:
            raise ValueError(f"--data {exc} for synthetic training") from None
        if held_out and not photos:  # one photo: nothing to hold out
            log.warning("--data %s has one photo: validating on procedural scenes", cfg.data)
            photos = None
    config = SyntheticConfig(size=cfg.crop, max_radius=cfg.max_blur, photo_prob=cfg.photo_prob,
                             radius_power=cfg.radius_power, narrow_prob=cfg.narrow_prob,
                             narrow_radius=cfg.narrow_blur, layouts=tuple(cfg.layouts.split(",")))
    return SyntheticDefocusDataset(photos, config,
                                   length=2**62, seed=seed)


def build_source(cfg: TrainConfig, seed: int):
    """The training dataset named by ``cfg.dataset``."""
    if cfg.dataset == "synthetic":
        return _synthetic(cfg, held_out=False, seed=seed)
    from ..data import pairs
    layout = {"folder": "auto", "dpdd": "dpdd", "lfdof": "lfdof"}[cfg.dataset]
    found = pairs.find_pairs(cfg.data, layout=layout, split="train")
    # (every image is checked against the crop here, from the sizes pairing read)
    return pairs.PairedImageDataset(found, crop=cfg.crop, augment=True, seed=seed)


def validation_pairs(cfg: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: the val folder's images, or held-out synthetic samples
    (held-out photos, seeds disjoint from training)."""
    if cfg.val_data:
        from ..data import pairs
        ds = pairs.PairedImageDataset(pairs.find_pairs(cfg.val_data, split="val"), crop=None, augment=False)
        val = [ds[i] for i in range(min(len(ds), cfg.val_images))]
        for (blurry, _), pair in zip(val, ds.pairs):
            if min(blurry.shape[-2:]) < SSIM_WINDOW:  # found now, not at the first validation
                raise ValueError(f"--val-data: {pair.blurry} is {blurry.shape[-1]}x{blurry.shape[-2]} px; validation "
                                 f"needs at least {SSIM_WINDOW}x{SSIM_WINDOW} (SSIM's window)")
        return val
    ds = _synthetic(cfg, held_out=True, seed=cfg.seed + 7_777_777)
    return [ds[i] for i in range(cfg.val_images)]
