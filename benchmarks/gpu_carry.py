"""Pack what a training stage on a remote GPU machine needs into one folder that travels.

    python benchmarks/gpu_carry.py --photos ../shared/data/sharp --init runs/wide_cascade_s1b/last.safetensors

A remote GPU machine may get only the repository and up to 64 MiB of carried,
git-ignored paths: no photo folder beside the checkout. This writes
``runs/gpu_carry`` (``--out``): ``photos/``, the training part of the photo
split (``inik.data.photos.select_photos(..., "train")``, so no held-out photo
travels) that is large enough for the stage's crops, as JPEG (quality 90, no
chroma subsampling), longest side at most ``--max-side`` (the few larger photos
then appear at a smaller scale than in training from the originals), in a
seeded order for as long as they fit
in ``--budget-mb`` (the count is printed); and ``init.safetensors``, a copy
of the weights the stage starts from (``configs/wide/cascade_gpu.json``'s
``init``, the previous stage's output). Training splits the packed photos 90/10
again, so its validation there uses training photos: not a held-out score. ``STEPS=train_wide bash
benchmarks/gpu_sweep.sh``, with ``runs/gpu_carry`` carried, trains from it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image


def pack(photos: str, init: str, out: Path, crop: int, max_blur: float, max_side: int, quality: int,
         budget_mb: float) -> tuple[int, int]:
    """Write ``out``; return (photos written, bytes in all)."""
    import numpy as np

    from inik.data.photos import select_photos
    from inik.data.synthesizer import SyntheticConfig

    root = Path(photos)
    canvas = SyntheticConfig(size=crop, max_radius=max_blur).canvas
    if out.exists():
        raise ValueError(f"--out {out} exists; remove it or name another folder")
    (out / "photos").mkdir(parents=True)
    shutil.copyfile(init, out / "init.safetensors")
    total, count = (out / "init.safetensors").stat().st_size, 0
    if total > budget_mb * 2**20:
        raise ValueError(f"--init alone is over --budget-mb {budget_mb:g}")
    train = select_photos(root, "train")
    for i in np.random.default_rng(0).permutation(len(train)):  # not one subfolder first
        path = train[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = min(1.0, max_side / max(im.size))
            size = (round(im.width * scale), round(im.height * scale))
            if min(size) < canvas:  # the synthesizer would skip it
                continue
            if scale < 1:
                im = im.resize(size, Image.LANCZOS)
            dest = out / "photos" / path.relative_to(root).with_suffix(".jpg")
            dest.parent.mkdir(parents=True, exist_ok=True)
            im.save(dest, quality=quality, subsampling=0)
        if total + dest.stat().st_size > budget_mb * 2**20:  # does not fit: the next one may
            dest.unlink()
            continue
        total += dest.stat().st_size
        count += 1
    return count, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", required=True, help="the folder of sharp photos training draws from")
    p.add_argument("--init", required=True, help="the weights the stage starts from (.safetensors)")
    p.add_argument("--out", default="runs/gpu_carry", help="the folder to write (must not exist)")
    p.add_argument("--crop", type=int, default=384, help="the stage's crop side [px]: smaller photos are left out")
    p.add_argument("--max-blur", type=float, default=32.0, help="the stage's largest blur radius [px]")
    p.add_argument("--max-side", type=int, default=1024, help="longest side of a packed photo [px]")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--budget-mb", type=float, default=48.0,
                   help="the most the folder may hold [MiB] (64 MiB travel, the repository included)")
    args = p.parse_args(argv)
    try:
        count, total = pack(args.photos, args.init, Path(args.out), args.crop, args.max_blur, args.max_side,
                            args.quality, args.budget_mb)
    except (OSError, ValueError) as exc:
        print(f"gpu_carry: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {count} photos and the initial weights, {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
