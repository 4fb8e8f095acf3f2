"""``inik synth``: write a fixed synthetic evaluation set (blurry/sharp pairs with
their blur-radius maps) that ``inik eval`` scores, from sharp photos or
procedural scenes. The same arguments give the same set on any machine, which
is how the model card's held-out figures are reproduced.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path


def _whole(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi] (no upper bound when hi is None)."""
    def parse(text: str) -> int:
        import argparse
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected a number >= {lo}" + (f" and <= {hi}" if hi is not None else "")
                                             + f", got {value}")
        return value
    return parse


_positive_int = _whole(1)


def _bounded(lo: float, hi: float, what: str):
    """An argparse type: a finite number in [lo, hi], described as ``what`` in errors."""
    def parse(text: str) -> float:
        import argparse
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


_fraction = _bounded(0.0, 1.0, "a fraction in [0, 1]")
_radius = _bounded(0.0, 64.0, "a radius in [0, 64] px")

#: Named settings; a flag given on the command line overrides its preset value.
#: "default": the model card's held-out set (radii up to 12 px, the range of its first training stages).
#: "wide": the wide-blur benchmark: radii up to 32 px at 512x512, photo scenes only, in the depth
#: layouts of real photos (a sharp subject before a blurred background, the reverse, a receding
#: surface, small sharp regions), scored per blur radius with ``inik eval --radius-bins``.
PRESETS = {
    "default": dict(size=256, max_blur=12.0, photo_prob=0.8, layouts=("random",)),
    "wide": dict(size=512, max_blur=32.0, photo_prob=1.0, layouts=("subject", "reverse", "slanted", "small-sharp")),
}


def _layouts(text: str) -> tuple:
    import argparse

    from .data.synthetic import parse_layouts
    try:
        return parse_layouts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {exc}") from None


def configure_parser(p) -> None:
    from .data.synthetic import MAX_COUNT, PHOTO_PARTS
    p.add_argument("out", help="folder to write: source/, target/, radius/ and params.jsonl")
    p.add_argument("--count", type=_whole(1, MAX_COUNT), required=True,
                   help=f"number of pairs, at most {MAX_COUNT} (required)")
    p.add_argument("--photos", help="folder of sharp photos, searched recursively (default: procedural "
                                     "scenes only)")
    p.add_argument("--photo-split", choices=PHOTO_PARTS, default="held-out",
                   help="which photos of --photos to use: held-out = the 10%% that `inik train` holds out (an "
                        "evaluation set that shares no photo with training), train = the 90%% it trains on, or all "
                        "(default: held-out)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="named settings for --size, --max-blur, --photo-prob and --layouts: default (the model "
                        "card's held-out set: 256 px, radii up to 12 px) or wide (the wide-blur benchmark: 512 px, "
                        "radii up to 32 px, photo scenes in four depth layouts); flags given override it "
                        "(default: default)")
    p.add_argument("--size", type=_positive_int, default=None, help="side of each pair [px] (default 256)")
    p.add_argument("--max-blur", type=_radius, default=None,
                   help="largest blur radius [px] (default 12, the model card's held-out set)")
    p.add_argument("--photo-prob", type=_fraction, default=None,
                   help="with --photos, the fraction of photo scenes; the rest are procedural (default 0.8)")
    p.add_argument("--layouts", type=_layouts, default=None,
                   help="comma-separated depth layouts, one drawn per pair: random, subject, reverse, slanted, "
                        "small-sharp (default random; see inik.data.SyntheticConfig.layouts)")
    p.add_argument("--seed", type=_whole(0), default=0, help="pair i is drawn from the seed (SEED, i) (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a set already in the folder (default: off)")


def run(args) -> int:
    from .data.synthetic import MAX_SIZE, SyntheticConfig, export_synthetic_pairs, select_photos
    out = Path(args.out)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        if not args.out.strip():  # Path("") is the current folder
            raise ValueError(f"OUT {args.out!r}: empty (name a folder; . for the current folder)")
        photos = None
        if args.photos is not None and Path(args.photos).resolve() in (out.resolve(), *out.resolve().parents):
            raise ValueError(f"OUT {out}: inside --photos {args.photos}: the set's images would be read as photos "
                             f"(and change the held-out split) the next time; write it elsewhere")
        if args.photos is not None:
            try:
                photos = select_photos(args.photos, args.photo_split)
            except (OSError, ValueError) as exc:
                raise ValueError(f"--photos {exc}") from None
            if not photos:
                raise ValueError(f"--photos {args.photos}: no photos in the {args.photo_split!r} part "
                                 f"(the held-out part needs at least two photos)")
        if not 8 <= args.size <= MAX_SIZE:
            raise ValueError(f"--size must be from 8 to {MAX_SIZE}; got {args.size}")
        config = SyntheticConfig(size=args.size, max_radius=args.max_blur, photo_prob=args.photo_prob,
                                 layouts=args.layouts)
        names = export_synthetic_pairs(out, args.count, photos=photos, config=config, seed=args.seed,
                                       overwrite=args.overwrite, progress=True)
    except (OSError, ValueError) as exc:
        print(f"inik synth: {exc}", file=sys.stderr)
        return 2
    source = f"{len(photos)} photos ({args.photo_split})" if photos else "procedural scenes"
    print(f"inik synth: wrote {len(names)} pairs of {args.size}x{args.size} from {source} to {out}")
    return 0
