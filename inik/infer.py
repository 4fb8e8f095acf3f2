"""The ``inik deblur`` command: photos in, deblurred photos out, one line per failed file.

The public names this module held before it was split stay importable from it
(``deblur`` from :mod:`inik.api`; ``load_model``, ``DEFAULT_WEIGHTS``, ``half_dtype``
... from :mod:`inik.loading`; ``restore``, ``tiled``, ``auto_tile`` ... from
:mod:`inik.tiling`); to change what ``inik.deblur`` uses, patch those modules.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .api import deblur
from .commands import (
    DEVICE_HELP,
    ITEM_ERRORS,
    SettingError,
    batch_status,
    check_device,
    check_tile_option,
    expand_inputs,
    item_error,
    output_path,
    say,
)
from .loading import DEFAULT_WEIGHTS, UNTRAINED_NOTE, WEIGHTS_DIR, cpu_has_bf16, half_dtype, load_model
from .tiling import (
    AUTO_MAX_PIXELS,
    AUTO_TILE,
    DEFAULT_OVERLAP,
    MIN_TILE,
    auto_tile,
    check_tiling,
    restore,
    tile_grid,
    tiled,
)

__all__ = ["AUTO_MAX_PIXELS", "AUTO_TILE", "DEFAULT_OVERLAP", "DEFAULT_WEIGHTS", "MIN_TILE", "WEIGHTS_DIR",
           "auto_tile", "check_tiling", "configure_parser", "cpu_has_bf16", "deblur", "half_dtype", "load_model",
           "restore", "run", "tile_grid", "tiled"]

# ------------------------------------------------------------------ command line


def configure_parser(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input) or folder (created if needed) (required)")
    p.add_argument("--weights", help="INIKNet safetensors file (default: the bundled weights)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile size in pixels, at least {MIN_TILE}, rounded down to a multiple of 16 (default: "
                        f"whole image up to ~2 megapixels, "
                        f"{AUTO_TILE}-px tiles beyond; 0: always the whole image)")
    p.add_argument("--overlap", type=int, default=None,
                   help=f"tile overlap in pixels (default {DEFAULT_OVERLAP}, at most 3/4 of the tile; widened so "
                        f"that tiles start every multiple of 16 px)")
    p.add_argument("--half", action="store_true",
                   help="bf16 autocast (fp16 on CUDA) where the CPU has native bf16 (AVX-512 BF16 or AMX); "
                        "elsewhere, where bf16 is emulated and slower, float32 with a notice; speed: see "
                        "benchmarks/RESULTS.md (default: off, float32)")
    p.add_argument("--compile", action="store_true",
                   help="run the network under torch.compile: a one-off compilation per image size, then "
                        "faster forwards; pays off only for many tiles or images of one size, see "
                        "benchmarks/RESULTS.md (default: off)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                   help="format of the outputs written into a folder (default: each input's own when it "
                        "can be written - PNG, TIFF, JPEG - else PNG); a single output file's suffix decides")
    p.add_argument("--quality", type=int, default=None, metavar="Q",
                   help="JPEG quality of JPEG outputs, 1-95; refused when no output is a JPEG (default 95)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (default: off)")


#: values of --format
OUTPUT_FORMATS = ("png", "jpg", "tif")


def _output_path(src: Path, root: Optional[Path], out: Path, to_file: bool, fmt: Optional[str] = None) -> Path:
    from .data.io import WRITE_EXTENSIONS as WRITABLE
    if to_file:
        return out
    rel = src.relative_to(root) if root is not None else Path(src.name)
    if fmt is not None:
        suffix = "." + fmt
    else:
        suffix = src.suffix if src.suffix.lower() in WRITABLE else ".png"
    return out / rel.with_suffix(suffix)


def _plan(inputs: list[str], output: str, fmt: Optional[str] = None) -> list[tuple[Path, Path]]:
    """(input, output) for every input file, checked before any is written: one output
    per input, none of them another input. Raises ValueError saying what is wrong."""
    from .data.io import WRITE_EXTENSIONS as WRITABLE
    files = expand_inputs(inputs)
    seen, unique = set(), []
    for src, root in files:  # the same file named twice (or through a link) is deblurred once
        key = src.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((src, root))
    out = output_path(output)
    single = len(unique) == 1
    # "out.png/" names a folder (Path drops the trailing separator)
    folder = out.is_dir() or str(output).endswith(("/", os.sep))
    if not single and out.suffix.lower() in WRITABLE and not folder:
        raise ValueError(f"-o {output}: {len(unique)} inputs need an output folder, not an image file")
    to_file = bool(single and out.suffix and not folder)
    if to_file and out.suffix.lower() not in WRITABLE:
        raise ValueError(f"-o {output}: cannot write {out.suffix!r} images; name a .png, .tif, .tiff, .jpg "
                         f"or .jpeg file, or an output folder")
    if fmt is not None and to_file:
        kind = {".jpeg": "jpg", ".tiff": "tif"}.get(out.suffix.lower(), out.suffix.lower()[1:])
        if kind != fmt:
            raise ValueError(f"--format {fmt} contradicts the output file -o {output}; name a folder, or "
                             f"a .{fmt} file")
    plan, writer = [], {}
    for src, root in unique:
        dst = _output_path(src, root, out, to_file, fmt)
        key = dst.resolve()
        if key in writer:
            raise ValueError(f"{writer[key]} and {src} would both be written to {dst}; deblur them into "
                             f"different folders")
        writer[key] = src
        blocked = next((d for d in dst.parents if d.exists() and not d.is_dir()), None)
        if blocked is not None:
            raise ValueError(f"{dst}: cannot write there, {blocked} is a file, not a folder")
        plan.append((src, dst))
    for src, dst in plan:  # after the collisions above, which name both inputs
        key = dst.resolve()
        if key in seen and key != src.resolve():
            raise ValueError(f"{src} would be written to {dst}, which is another input; choose another "
                             f"output folder")
    return plan


def _output_depth(dst: Path, info) -> int:
    """16-bit output for 16-bit and floating-point sources (except JPEG, 8 bits only)."""
    from .data.io import JPEG_EXTENSIONS
    return 8 if dst.suffix.lower() in JPEG_EXTENSIONS or info.bit_depth == 8 else 16


def run(args) -> int:
    """Exit status: 0 every image deblurred; 1 some failed (each named on stderr, the others
    written); 2 bad flags, or every image failed (nothing written)."""
    from tqdm import tqdm

    from .data.io import JPEG_EXTENSIONS, read_image, write_image
    try:
        check_tile_option(args.tile, args.overlap)
        args.device = str(check_device(args.device))
        if args.quality is not None and not 1 <= args.quality <= 95:
            raise ValueError(f"--quality must be in 1..95 (JPEG quality), got {args.quality}")
        plan = _plan(args.inputs, args.output, args.format)
        kinds = sorted({dst.suffix.lower() for _, dst in plan})
        if args.quality is not None and not set(JPEG_EXTENSIONS) & set(kinds):
            raise ValueError(f"--quality sets the JPEG quality, and no output is a JPEG (they are "
                             f"{', '.join(kinds)}); write .jpg files (-o NAME.jpg, or --format jpg for a folder)")
    except ValueError as exc:
        print(f"inik deblur: {exc}", file=sys.stderr)
        return 2
    try:
        model, trained = load_model(args.weights, device=args.device)
    except (OSError, ValueError) as exc:
        print(f"inik deblur: cannot load weights: {exc}", file=sys.stderr)
        return 2
    if not trained:
        print("inik deblur: WARNING: " + UNTRAINED_NOTE.format(path=DEFAULT_WEIGHTS), file=sys.stderr)
    if args.compile:
        # One graph per input shape (all tiles of a photo share one); the IFM stays one opaque op.
        model = torch.compile(model, dynamic=False)
    failures = 0
    tiles = tqdm(desc="tiles", unit="tile", leave=False, disable=None, position=1)
    for done, (src, dst) in enumerate(tqdm(plan, desc="deblur", unit="img", disable=None, position=0)):
        try:
            if dst.resolve() == src.resolve() and not args.overwrite:
                raise FileExistsError(f"{dst}: output would replace the input (pass --overwrite)")
            if (dst.exists() or dst.is_symlink()) and not args.overwrite:  # a dangling link too
                raise FileExistsError(f"{dst}: exists (pass --overwrite to replace it)")
            img, info = read_image(src, mode=None)
            depth = _output_depth(dst, info)
            if dst.suffix.lower() in JPEG_EXTENSIONS and info.has_alpha:
                raise ValueError(f"{dst}: JPEG cannot hold {src}'s alpha channel; write .png or .tif")
            t0 = time.perf_counter()
            result = deblur(img, model, tile=args.tile, overlap=args.overlap, device=args.device,
                            half=args.half, progress=tiles)
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, result, bit_depth=depth, overwrite=args.overwrite, quality=args.quality or 95,
                        icc_profile=info.icc_profile, exif=info.exif)
            say(f"{src} -> {dst} ({info.width}x{info.height}, {depth}-bit, {time.perf_counter() - t0:.1f} s)")
        except SettingError:  # a bad INIK_* value: bad usage, for every item (cli.main)
            raise
        except ITEM_ERRORS as exc:  # one bad file must not stop the batch
            failures += 1
            print(f"inik deblur: {item_error(exc, src)}", file=sys.stderr)
        except KeyboardInterrupt:  # cli.main prints it; an output is whole or absent (write_image is atomic)
            raise KeyboardInterrupt(f"interrupted after {done} of {len(plan)} images") from None
    tiles.close()
    if not trained:
        print("inik deblur: the output above came from an UNTRAINED model", file=sys.stderr)
    return batch_status(failures, len(plan))
