"""``inik eval``: per-image and mean PSNR / SSIM / MAE / LPIPS with the paper's protocol.

Protocol (docs/ARCHITECTURE.md section 5): images scaled to [0, 1] (read as 8-bit by
default, as the authors' cv2 reading does - a 16-bit file keeps its high byte -
or at their native bit depth with ``--bits native``), the output clipped to
[0, 1], full images, no border crop, scikit-image's PSNR and SSIM, LPIPS
(AlexNet) on [-1, 1] when its weights are available.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .commands import DEVICE_HELP
from .loading import half_dtype, load_model
from .tiling import restore


def to_8bit(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """What an 8-bit reader (cv2.imread) sees of an image read at ``bit_depth``: a
    16-bit file keeps its high byte; returns float32 in [0, 1] on the 8-bit grid."""
    if bit_depth == 8:
        return image
    if bit_depth != 16:
        raise ValueError(f"cannot reduce a {bit_depth}-bit image to 8 bits")
    codes = np.round(image.astype(np.float64) * 65535).astype(np.uint16) >> 8
    return (codes / 255.0).astype(np.float32)


def radius_maps(pairs) -> dict:
    """``{pair.name: (radius map path, radius_scale)}`` for the pairs of a set written by
    ``inik synth`` (its ``radius/`` maps and ``params.jsonl``); ValueError naming what is missing."""
    import json
    maps = {}
    scales: dict = {}
    for pair in pairs:
        root = pair.sharp.parent.parent
        if root not in scales:
            params = root / "params.jsonl"
            if not params.is_file():
                raise ValueError(f"--radius-bins: {root} has no params.jsonl (a set written by inik synth has it, "
                                 f"with its radius/ maps)")
            try:
                records = [json.loads(line) for line in params.read_text().splitlines() if line.strip()]
                scales[root] = {str(r["name"]): float(r["radius_scale"]) for r in records}
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"--radius-bins: {params} gives no radius scale per pair ({type(exc).__name__}: "
                                 f"{exc}); write the set again with this version of inik synth") from None
        path = root / "radius" / pair.sharp.name
        if not path.is_file() or pair.name not in scales[root]:
            raise ValueError(f"--radius-bins: no radius map for pair {pair.name} (expected {path} and its line "
                             f"in params.jsonl)")
        maps[pair.name] = (path, scales[root][pair.name])
    return maps


def evaluate_folder(model, pairs, *, bits: str = "8", device="cpu", tile: Optional[int] = None,
                    lpips=None, progress: bool = False, half: bool = False, crop_multiple: int = 1,
                    radius_bins=None, keep_going: bool = False) -> dict:
    """Metrics of ``model`` on ``pairs`` (from :func:`inik.data.pairs.find_pairs`);
    ``model=None`` scores the blurry inputs themselves (the baseline to beat).
    ``half``: run the model under ``--half``'s autocast (:func:`inik.loading.half_dtype`).
    ``crop_multiple``: crop both images top-left to multiples of it before anything
    runs (1: whole images; the authors' test script uses 32, so DPDD's 1680x1120
    pairs are scored at 1664x1120).

    ``radius_bins``: bin edges [px]; the pairs must come from ``inik synth`` (their
    radius maps are read) and the report gains ``"radius_bins"``
    (:class:`inik.metrics.RadiusBins`).

    A pair that cannot be scored (unreadable, too small, sizes that differ, NaN or Inf
    values, a model that fails on it: :data:`inik.commands.ITEM_ERRORS`) raises, naming
    its file; with ``keep_going`` it is listed in ``"failed"`` instead and the rest are scored.

    Returns ``{"mean": {...}, "scored": n, "images": [{"name", "psnr", "ssim", "mae", ["lpips"],
    "seconds"}], "failed": [{"name", "blurry", "sharp", "error"}]}``; the mean is over the
    ``scored`` pairs (``{}`` when none was), the PSNR's over those that differ from their
    reference: a pair returned exactly scores an infinite PSNR, which would make the mean
    say nothing of the others (``"identical"`` counts them).
    """
    from .commands import ITEM_ERRORS, SettingError, item_error
    from .data.io import read_finite_image, read_image
    from .metrics import RadiusBins, evaluate
    if isinstance(crop_multiple, bool) or not isinstance(crop_multiple, int) or crop_multiple < 1:
        raise ValueError(f"crop_multiple must be an integer >= 1, got {crop_multiple!r}")
    bins = RadiusBins(radius_bins) if radius_bins is not None else None
    maps = radius_maps(pairs) if bins is not None else {}
    device = torch.device(device)
    autocast = half_dtype(device) if half and model is not None else None
    rows, failed = [], []
    it = pairs
    if progress:
        from tqdm import tqdm
        it = tqdm(pairs, desc="eval", unit="img")
    for pair in it:
        try:
            _check_images([pair], bits, lpips=lpips is not None, crop_multiple=crop_multiple)
            images = []
            for path in (pair.blurry, pair.sharp):
                img, info = read_finite_image(path)
                images.append(to_8bit(img, info.bit_depth) if bits == "8" else img)
            if images[0].shape != images[1].shape:
                (hb, wb), (hs, ws) = images[0].shape[:2], images[1].shape[:2]
                raise ValueError(f"size mismatch: {pair.blurry} is {wb}x{hb} but its partner {pair.sharp} "
                                 f"is {ws}x{hs}")
            blurry, sharp = (_crop_to_multiple(im, crop_multiple) for im in images)
            y = torch.from_numpy(np.ascontiguousarray(blurry.transpose(2, 0, 1)))[None]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            x = y.clamp(0, 1) if model is None else restore(model, y, tile=tile, autocast_dtype=autocast)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            row = {"name": pair.name, **evaluate(x[0], sharp, lpips=lpips), "seconds": seconds}
            if bins is not None:
                path, scale = maps[pair.name]
                radius = _crop_to_multiple(read_image(path)[0], crop_multiple)[..., 0].astype(np.float64) * scale
                bins.add(x[0], sharp, radius)  # checks the map's size before it adds anything
        except SettingError:  # a bad INIK_* value: bad usage, for every item (cli.main)
            raise
        except ITEM_ERRORS as exc:
            if not keep_going:
                raise
            failed.append({"name": pair.name, "blurry": str(pair.blurry), "sharp": str(pair.sharp),
                           "error": item_error(exc, pair.blurry, pair.sharp)})
            continue
        except KeyboardInterrupt:  # cli.main prints it
            raise KeyboardInterrupt(f"interrupted after {len(rows) + len(failed)} of {len(pairs)} pairs") from None
        rows.append(row)
    keys = [k for k in ("psnr", "ssim", "mae", "lpips", "seconds") if rows and k in rows[0]]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    differ = [r["psnr"] for r in rows if np.isfinite(r["psnr"])]
    if differ and len(differ) < len(rows):
        mean["psnr"] = float(np.mean(differ))
    report = {"mean": mean, "scored": len(rows), "identical": len(rows) - len(differ), "images": rows,
              "failed": failed}
    if bins is not None:
        report["radius_bins"] = bins.result()
    return report


def configure_parser(p) -> None:
    p.add_argument("--data", required=True,
                   help="folder with source/ and target/ (or a DPDD/RealDOF/RTF/LFDOF root) (required)")
    p.add_argument("--layout", default="auto", help="dataset layout (default: auto-detect)")
    p.add_argument("--split", default=None, help="split of a DPDD root: train, val or test (default test)")
    p.add_argument("--weights", help="INIKNet safetensors file (default: the bundled weights)")
    p.add_argument("--out", required=True,
                   help="report .json path (the per-image CSV is written beside it); an image equal to its "
                        "reference has PSNR inf, written as the string \"inf\" (required)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report (default: off)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--tile", type=int, default=None,
                   help="tile size in pixels, as for inik deblur (default: every image whole, whatever its size)")
    p.add_argument("--half", action="store_true",
                   help="run the model as `inik deblur --half` does (bf16 autocast, fp16 on CUDA), to see what "
                        "it costs in quality; the paper's protocol is float32 (default: off)")
    p.add_argument("--bits", choices=["8", "native"], default="8",
                   help="read images as 8-bit like the paper, or at their native bit depth (default: 8)")
    p.add_argument("--lpips", choices=["auto", "on", "off"], default="auto",
                   help="LPIPS: auto = when the AlexNet weights are available (default: auto)")
    p.add_argument("--crop-multiple", type=int, default=1, metavar="M",
                   help="crop both images top-left to multiples of M before scoring (default 1: whole images, "
                        "as ARCHITECTURE.md section 5 states; the authors' test script crops to 32, so "
                        "--crop-multiple 32 reproduces how the paper's DPDD figures were computed)")
    p.add_argument("--radius-bins", type=_edges, default=None, metavar="EDGES",
                   help="also score PSNR/SSIM per blur-radius bin between these comma-separated edges in px, "
                        "e.g. 0,2,4,8,16,32, from the radius maps of a set written by inik synth (default: none)")
    p.add_argument("--identity", action="store_true",
                   help="score the blurry inputs themselves instead of a model's output (default: off)")


def _edges(text: str) -> list:
    import argparse

    from .metrics import RadiusBins
    try:
        return RadiusBins([float(t) for t in text.split(",")]).edges
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected at least two increasing finite numbers >= 0, separated by "
                                         f"commas; got {text!r}") from None


def _finite_json(value):
    """``value`` with non-finite floats as the strings "inf" / "-inf" / "nan": the PSNR
    of an image equal to its reference is infinite, which strict JSON cannot hold."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _check_out(out: Path, overwrite: bool) -> Path:
    """The CSV path beside the report; ValueError when ``--out`` cannot be written."""
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: name a .json report (the per-image CSV is written beside it)")
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; name a .json report")
    for parent in out.parents:  # the nearest existing folder above the report (the rest is created)
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is not a folder")
            break
    csv_path = out.with_suffix(".csv")
    if csv_path.is_dir():
        raise ValueError(f"--out {out}: the per-image report's name {csv_path} is a folder")
    for path in (out, csv_path):
        if path.exists() and not overwrite:
            raise ValueError(f"--out: {path} exists (pass --overwrite to replace it)")
    return csv_path


def _crop_to_multiple(image: np.ndarray, m: int) -> np.ndarray:
    h, w = image.shape[:2]
    return image[: h - h % m, : w - w % m]


def _check_images(pairs, bits: str, lpips: bool = False, crop_multiple: int = 1) -> None:
    """What makes a pair unscorable before it is read whole: sizes too small for SSIM
    (or LPIPS, ``lpips``: whether it will be computed) and float images read as 8-bit."""
    from .data.io import is_float_image, read_image_info
    from .losses import LPIPS_MIN_SIZE
    from .metrics import SSIM_WINDOW
    for pair in pairs:
        for path in (pair.blurry, pair.sharp):
            width, height = read_image_info(path)
            width, height = width - width % crop_multiple, height - height % crop_multiple
            if min(width, height) < SSIM_WINDOW:
                raise ValueError(f"{path}: {width}x{height} is too small for SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")
            if lpips and min(width, height) < LPIPS_MIN_SIZE:
                raise ValueError(f"{path}: {width}x{height} is too small for LPIPS (AlexNet needs at least "
                                 f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} px); --lpips off scores it without LPIPS")
            if bits == "8" and is_float_image(path):  # float TIFFs have no 8-bit reading
                raise ValueError(f"{path}: a floating-point image cannot be read as 8-bit; use --bits native")


def run(args) -> int:
    """Exit status: 0 all pairs scored; 1 some failed (each named on stderr and in the
    report's "failed"); 2 bad flags or data, or no pair could be scored (no report)."""
    from .commands import check_device, check_tile_option
    from .data.io import write_atomically
    from .data.pairs import LAYOUTS, find_pairs, resolve_layout
    from .losses import MissingWeightsError
    from .metrics import LPIPSMetric
    try:
        csv_path = _check_out(Path(args.out), args.overwrite)
        args.device = str(check_device(args.device))
        check_tile_option(args.tile)
        if args.crop_multiple < 1:
            raise ValueError(f"--crop-multiple must be >= 1, got {args.crop_multiple}")
        if args.identity:
            given = [flag for flag, value in (("--weights", args.weights), ("--half", args.half),
                                              ("--tile", args.tile)) if value not in (None, False)]
            if given:
                raise ValueError(f"--identity scores the blurry inputs, no model runs: {', '.join(given)} "
                                 f"{'does' if len(given) == 1 else 'do'} not apply")
        split = args.split or "test"
        layout = resolve_layout(args.data, args.layout, split=split)
        if args.split is not None and "{split}" not in "".join(LAYOUTS[layout][:2]):
            raise ValueError(f"--split {args.split}: {args.data} has the {layout} layout, which has no splits "
                             f"(--split is for a DPDD root)")
        # sizes (and whether each file opens) are checked pair by pair: a bad pair fails alone
        pairs = find_pairs(args.data, layout=layout, split=split, check_sizes=False)
        if not pairs:
            raise ValueError(f"no image pairs in {args.data}")
        if args.radius_bins is not None:
            radius_maps(pairs)
    except (OSError, ValueError) as exc:
        print(f"inik eval: {exc}", file=sys.stderr)
        return 2
    lpips = None  # decided before the images are scored: LPIPS needs larger images than the other metrics
    if args.lpips != "off":
        try:
            lpips = LPIPSMetric(args.device)
        except MissingWeightsError as exc:
            if args.lpips == "on":
                print(f"inik eval: {exc}", file=sys.stderr)
                return 2
            print(f"inik eval: LPIPS skipped: {exc}", file=sys.stderr)
    try:
        model, trained = (None, False) if args.identity else load_model(args.weights, device=args.device)
    except (OSError, ValueError) as exc:
        print(f"inik eval: {exc}", file=sys.stderr)
        return 2
    if not trained and not args.identity:
        print("inik eval: WARNING: evaluating an UNTRAINED model (no weights given or bundled)", file=sys.stderr)
    try:
        report = evaluate_folder(model, pairs, bits=args.bits, device=args.device, tile=args.tile,
                                 lpips=lpips, progress=True, half=args.half, crop_multiple=args.crop_multiple,
                                 radius_bins=args.radius_bins, keep_going=True)
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(f"{exc or 'interrupted'}; no report written") from None
    for failure in report["failed"]:
        print(f"inik eval: {failure['error']}", file=sys.stderr)
    if not report["images"]:
        print(f"inik eval: none of the {len(pairs)} pairs could be scored; no report written", file=sys.stderr)
        return 2
    report.update(data=str(args.data), layout=layout, split=split if layout == "dpdd" else None,
                  weights="identity" if args.identity else str(args.weights or "default"),
                  trained=trained, device=str(args.device), bits=args.bits, tile=args.tile,
                  lpips=lpips is not None, half=args.half and not args.identity, crop_multiple=args.crop_multiple)
    out = Path(args.out)
    table = io.StringIO(newline="")
    fields = list(report["images"][0]) + (["error"] if report["failed"] else [])
    w = csv.DictWriter(table, fieldnames=fields)
    w.writeheader()
    w.writerows(report["images"])
    w.writerows({"name": f["name"], "error": f["error"]} for f in report["failed"])
    # names that are not UTF-8 (surrogate escapes) go into the CSV as the bytes the file system holds
    files = {out: json.dumps(_finite_json(report), indent=2, allow_nan=False).encode(),
             csv_path: table.getvalue().encode("utf-8", "surrogateescape")}
    try:  # each file whole or not at all
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, data in files.items():
            write_atomically(path, data)
    except OSError as exc:
        print(f"inik eval: cannot write the report {out}: {exc}", file=sys.stderr)
        return 2
    failed = f" ({len(report['failed'])} failed, listed in {out})" if report["failed"] else ""
    if report["identical"] and report["identical"] < report["scored"]:
        failed += (f"; psnr over the {report['scored'] - report['identical']} pairs that differ from their "
                   f"reference ({report['identical']} identical)")
    print("inik eval: " + ", ".join(f"{k} {v:.4f}" for k, v in report["mean"].items())
          + f" over {report['scored']} of {len(pairs)} pairs{failed}")
    for row in report.get("radius_bins", []):
        show = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731 (SSIM has none in a bin of border pixels)
        scores = "no pixels" if row["psnr"] is None else f"psnr {show(row['psnr'])}, ssim {show(row['ssim'])}"
        print(f"inik eval: radius {row['bin']} px: {scores} ({row['pixels']} px)")
    return 1 if report["failed"] else 0
