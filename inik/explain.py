"""``inik explain``: what the model saw in a photo, as PNGs (the paper's Figures 4 and 5).

Writes into the output folder:

* ``defocus_size.png``: the expected inverse-kernel size per pixel,
  ``sum_r mu_r * k_r`` with ``k_r = 1, 3, ..., 2R-1`` (1 = in focus), colour-mapped,
  with its range in ``explain.json``;
* ``mu_scale{r}.png``: each scale's weight mu_r in [0, 1];
* ``omega.png``: the N omega maps side by side, each normalised to its own range;
* ``atoms_spatial.png`` and ``atoms_fourier.png``: the dictionary, one row per
  scale (3x3 ... 15x15), one column per atom; Fourier = centred |FFT| on a
  common grid;
* ``explain.json``: the numbers behind the pictures.

Several images (or a folder): each one's files go into a folder of its own in the
output folder; one that cannot be explained is named on stderr, the others are done.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Collection, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

# A perceptually ordered colour map (anchors of viridis), interpolated linearly.
_ANCHORS = np.array([[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                     [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]],
                    dtype=np.float64) / 255


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float32 RGB in [0, 1], ``lo`` dark purple to ``hi`` yellow."""
    anchors = _ANCHORS.astype(np.float32)
    t = np.clip((np.asarray(values, np.float32) - lo) / max(hi - lo, 1e-12), 0, 1) * (len(anchors) - 1)
    i = np.minimum(t.astype(np.int32), len(anchors) - 2)
    f = (t - i)[..., None]
    return anchors[i] * (1 - f) + anchors[i + 1] * f


def _u8(rgb: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> the 8-bit codes write_image would write (a quarter of float32's memory)."""
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _tile_row(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Images side by side on white (1.0, or 255 for uint8), ``gap`` pixels apart."""
    h = max(im.shape[0] for im in images)
    white = 255 if images[0].dtype == np.uint8 else 1.0
    row = []
    for im in images:
        pad = np.full((h, im.shape[1], 3), white, dtype=im.dtype)
        pad[:im.shape[0]] = im
        row += [pad, np.full((h, gap, 3), white, dtype=im.dtype)]
    return np.concatenate(row[:-1], 1)


def _upscale(im: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale of a (k, k, 3) image to about ``size`` pixels."""
    f = max(1, size // im.shape[0])
    return np.kron(im, np.ones((f, f, 1)))


def atom_sheets(atoms: list[torch.Tensor], cell: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(spatial, fourier) RGB sheets of the dictionary: one row per scale, one column per atom."""
    big = max(a.shape[-1] for a in atoms)
    fft_size = 2 * big + 1
    spatial_rows, fourier_rows = [], []
    for a in atoms:
        a = a.detach().double().cpu()
        lim = float(a.abs().max()) or 1.0
        spatial_rows.append(_tile_row([_upscale(colormap(x.numpy(), -lim, lim), cell) for x in a]))
        spec = torch.fft.fftshift(torch.fft.fft2(a, s=(fft_size, fft_size)).abs(), dim=(-2, -1))
        smax = float(spec.max()) or 1.0
        fourier_rows.append(_tile_row([_upscale(colormap(x.numpy(), 0, smax), 2 * cell) for x in spec]))

    def stack(rows):
        width = max(r.shape[1] for r in rows)
        padded = [np.concatenate([r, np.ones((r.shape[0], width - r.shape[1], 3))], 1) for r in rows]
        return np.concatenate(sum([[p, np.ones((4, width, 3))] for p in padded], [])[:-1], 0)

    return stack(spatial_rows), stack(fourier_rows)


STALE_PATTERN = "mu_scale*.png"  # explain's per-scale files: a model with fewer scales leaves some behind
# ... exactly as explain names them: mu_scale_notes.png or mu_scale3_old.png are the user's
_STALE_NAME = re.compile(r"mu_scale(0|[1-9][0-9]*)\.png")


def explain(model, image: np.ndarray, out_dir: str | Path, overwrite: bool = False,
            tile: Optional[int] = None, overlap: Optional[int] = None, keep: Collection[Path] = ()) -> dict:
    """Write the interpretation PNGs of ``model`` on ``image`` ((H, W, 3) float in [0, 1]) into
    ``out_dir``; returns the summary written to ``explain.json``.

    Every output name is checked before anything is written: an existing one is
    an error (FileExistsError) unless ``overwrite``, which also removes per-scale
    maps an earlier run with more scales left in ``out_dir``. ``tile``/``overlap``:
    as for ``inik deblur`` (None: whole images up to about 2 megapixels, tiles
    beyond, :func:`inik.tiling.auto_tile`; 0: always whole), so memory stays
    bounded for any photo size; the maps of the tiles are blended as deblur
    blends its outputs. ``keep``: files (the inputs) that are never replaced or
    removed, overwrite or not: a map that would replace one is an error.
    """
    from .data.io import write_atomically, write_image
    from .tiling import auto_tile, tiled
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out}: is a file, not a folder (the output folder)")
    scales = model.config.scales
    names = (["defocus_size.png"] + [f"mu_scale{r}.png" for r in range(scales)]
             + ["omega.png", "atoms_spatial.png", "atoms_fourier.png", "explain.json"])
    keep = {Path(k).resolve() for k in keep}
    clash = [n for n in names if (out / n).resolve() in keep]
    if clash:
        raise FileExistsError(f"{out / clash[0]}: an input, which its map would replace; explain into another "
                              f"folder (nothing written)")
    existing = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"{out / existing[0]}: file exists" + (f" (and {len(existing) - 1} more)"
                              if len(existing) > 1 else "") + "; nothing written (--overwrite replaces them)")
    device = next(model.parameters()).device
    y = torch.from_numpy(np.ascontiguousarray(image[..., :3].transpose(2, 0, 1))).float()[None]

    @torch.no_grad()
    def finest_maps(x):  # (1, R + N, h, w): the finest level's mu and omega
        maps = model.interpret(x.to(device).contiguous(memory_format=torch.channels_last))
        return torch.cat([maps.mu[-1], maps.omega[-1]], 1).float()

    t, o = auto_tile(y.shape[-2], y.shape[-1], tile, overlap)
    both = tiled(finest_maps, y, t, o)[0]
    mu, omega = both[:scales], both[scales:]  # (R, H, W), (N, H, W)
    with torch.no_grad():
        atoms = [model.dictionary.scale_atoms(s) for s in range(1, scales)]
    sizes = torch.arange(mu.shape[0], dtype=torch.float32) * 2 + 1
    size_map = (mu * sizes[:, None, None]).sum(0).numpy()
    kmax = float(sizes[-1])
    # maps as 8-bit codes as soon as they are coloured: a 10-megapixel photo's omega row in
    # float64 took 5 GB
    omegas = [_u8(colormap(o.numpy(), float(o.min()), float(o.max()))) for o in omega]
    spatial, fourier = atom_sheets(atoms)
    images = {"defocus_size.png": _u8(colormap(size_map, 1.0, kmax)),
              **{f"mu_scale{r}.png": mu[r].numpy() for r in range(mu.shape[0])},
              "omega.png": _tile_row(omegas, gap=4), "atoms_spatial.png": spatial, "atoms_fourier.png": fourier}
    summary = {
        "defocus_size": {"min": float(size_map.min()), "max": float(size_map.max()),
                         "mean": float(size_map.mean()), "colour_range": [1.0, kmax]},
        "mu_mean_per_scale": [float(m) for m in mu.mean((1, 2))],
        "omega_range": [[float(o.min()), float(o.max())] for o in omega],
        "atom_sizes": [int(a.shape[-1]) for a in atoms],
    }
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Every map is written under a temporary name first and renamed into place once all are
    # written: a failed write (disk full, Ctrl-C) leaves the folder as it was, old maps included.
    staged = {}
    try:
        for name, data in (*images.items(), ("explain.json", json.dumps(summary, indent=2).encode())):
            staged[out / name] = out / f".inik-part-{name}"
            try:
                if isinstance(data, bytes):
                    write_atomically(staged[out / name], data)
                else:
                    write_image(staged[out / name], data, overwrite=True)
            except OSError as exc:  # named as the map, not its temporary
                raise OSError(f"{out / name}: cannot write it: {exc.strerror or exc}") from None
    except BaseException:
        for part in staged.values():
            part.unlink(missing_ok=True)
        if made and not any(out.iterdir()):
            out.rmdir()
        raise
    for final, part in staged.items():
        os.replace(part, final)
    if overwrite:
        stale_maps = {p for p in out.glob(STALE_PATTERN) if _STALE_NAME.fullmatch(p.name) and p.resolve() not in keep}
        for stale in sorted(stale_maps - {out / n for n in images}):
            stale.unlink()
            log.warning("removed %s: a map from an earlier run with more scales", stale)
    return summary


def configure_parser(p) -> None:
    from .commands import DEVICE_HELP
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders or globs; one image file: its maps go into DIR, else each "
                        "image's into DIR/<its name without suffix>")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (required)")
    p.add_argument("--weights", help="INIKNet safetensors file (default: the bundled weights)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace existing files in DIR (default: off)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile size in pixels, as for inik deblur (default: whole image up to ~2 megapixels, "
                        "tiles beyond; 0: always the whole image)")


def _plan(inputs: list[str], output: str) -> list[tuple[Path, Path]]:
    """(image, its output folder) for every input: DIR itself for a single image file, else
    DIR/<its path under the folder given, without suffix>; ValueError when two would share one."""
    from .commands import expand_inputs, output_path
    out = output_path(output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out}: is a file, not a folder (the output folder)")
    files = list({src.resolve(): (src, root) for src, root in expand_inputs(inputs)}.values())
    if len(files) == 1 and files[0][1] is None:
        return [(files[0][0], out)]
    plan, owner = [], {}
    for src, root in files:
        dst = out / (src.relative_to(root) if root is not None else Path(src.name)).with_suffix("")
        if dst in owner:
            raise ValueError(f"{owner[dst]} and {src} would both be explained into {dst}; explain them into "
                             f"different folders")
        owner[dst] = src
        plan.append((src, dst))
    return plan


def run(args) -> int:
    """Exit status: 0 every image explained; 1 some images failed (each named on stderr, the
    others explained); 2 bad flags or outputs, or every image failed (nothing written)."""
    from .commands import ITEM_ERRORS, SettingError, batch_status, check_device, check_tile_option, item_error, say
    from .data.io import read_image
    from .loading import DEFAULT_WEIGHTS, UNTRAINED_NOTE, load_model
    try:
        args.device = str(check_device(args.device))
        check_tile_option(args.tile)
        plan = _plan(args.inputs, args.output)
        model, trained = load_model(args.weights, device=args.device)
    except (OSError, ValueError) as exc:
        print(f"inik explain: {exc}", file=sys.stderr)
        return 2
    if not trained:
        print("inik explain: WARNING: " + UNTRAINED_NOTE.format(path=DEFAULT_WEIGHTS), file=sys.stderr)
    inputs = [src for src, _ in plan]
    failures = 0
    for done, (src, dst) in enumerate(plan):
        try:
            image, _ = read_image(src)
            summary = explain(model, image, dst, overwrite=args.overwrite, tile=args.tile, keep=inputs)
        except SettingError:  # a bad INIK_* value: bad usage, for every item (cli.main)
            raise
        except ITEM_ERRORS as exc:  # one bad image must not stop the others
            failures += 1
            print(f"inik explain: {item_error(exc, src)}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # cli.main prints it
            raise KeyboardInterrupt(f"interrupted after {done} of {len(plan)} images") from None
        d = summary["defocus_size"]
        say(f"inik explain: wrote {dst} (defocus size {d['min']:.2f}..{d['max']:.2f} px, mean {d['mean']:.2f})")
    return batch_status(failures, len(plan))
