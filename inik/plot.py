"""``inik plot RUN``: the loss and PSNR curves of a training run, from ``RUN/log.csv``,
as a PNG (``RUN/curves.png`` unless ``-o`` names another file).

Top: the training loss against iteration (a log scale when it spans more than a decade).
Bottom: the training PSNR (a line) and the validation PSNR (points on a line).
Needs matplotlib (``pip install 'inik[plot]'``). The file is written atomically, and
never over an existing one without ``--overwrite``. Run it while training runs to
see how far it got.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import warnings
from pathlib import Path

#: the PNG's size [px]
WIDTH, HEIGHT = 800, 600
_COLUMNS = ("iter", "loss", "psnr", "val_psnr")


def read_log(path: Path) -> dict[str, list]:
    """``iter``, ``loss``, ``psnr`` (one per row) and ``val_iter``, ``val_psnr`` (the
    validation rows) of a training log, and ``cut``: the line number of a cut-off last row
    left out (a run writing it, or stopped while it did), or None; ValueError naming the
    file and line if it is not a training log."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: not a training log (no column {', '.join(missing)})")
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a training log (not text)") from None
    except csv.Error as exc:  # a field past csv's limit: a NUL-filled tail, or not a log at all
        raise ValueError(f"{path}: not a training log ({exc})") from None
    curves = {"iter": [], "loss": [], "psnr": [], "val_iter": [], "val_psnr": [], "cut": None}
    for n, (line, row) in enumerate(rows):
        try:
            it = int(row["iter"])
            if not 0 <= it < 2**53:  # an iteration a plot can place (floats)
                raise ValueError
            values = float(row["loss"]), float(row["psnr"]), float(row["val_psnr"]) if row["val_psnr"] else None
        except (TypeError, ValueError):  # a short row gives None, a bad number a ValueError
            if n == len(rows) - 1 and n > 0:
                curves["cut"] = line
                break
            text = ",".join(str(v) for v in row.values())
            raise ValueError(f"{path}, line {line}: not a training log row: {text[:80]!r}") from None
        curves["iter"].append(it)
        curves["loss"].append(values[0])
        curves["psnr"].append(values[1])
        if values[2] is not None:
            curves["val_psnr"].append(values[2])
            curves["val_iter"].append(it)
    if not curves["iter"]:
        raise ValueError(f"{path}: holds no rows yet")
    return curves


def draw(curves: dict[str, list], title: str) -> bytes:
    """The PNG of the curves, WIDTH x HEIGHT pixels."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(WIDTH / 100, HEIGHT / 100), dpi=100)
    try:
        top.plot(curves["iter"], curves["loss"], color="tab:blue", label="training loss (interval mean)")
        low, high = min(curves["loss"]), max(curves["loss"])
        if low > 0 and math.isfinite(high) and high > 10 * low:  # more than a decade
            top.set_yscale("log")
        top.set_ylabel("loss")
        top.set_title(title)
        top.legend(loc="upper right")
        bottom.plot(curves["iter"], curves["psnr"], color="tab:blue", alpha=0.6, label="training (interval mean)")
        if curves["val_iter"]:
            bottom.plot(curves["val_iter"], curves["val_psnr"], "o-", color="tab:red", label="validation")
        bottom.set_xlabel("iteration")
        bottom.set_ylabel("PSNR [dB]")
        bottom.legend(loc="lower right")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


def configure_parser(p) -> None:
    p.add_argument("run", metavar="RUN", help="a training run's folder (inik train --out), holding log.csv")
    p.add_argument("-o", "--output", metavar="FILE", help="PNG file to write (default: RUN/curves.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE (default: off)")


def run(args) -> int:
    from .data.io import write_atomically
    run_dir = Path(args.run)
    out = Path(args.output) if args.output else run_dir / "curves.png"
    try:
        if out.suffix.lower() != ".png":
            raise ValueError(f"-o {out}: name a .png file")
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
        log_path = run_dir / "log.csv"
        if not log_path.is_file():
            raise FileNotFoundError(f"no training log {log_path}")
        curves = read_log(log_path)
    except (ValueError, OSError) as exc:
        print(f"inik plot: {exc}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("inik plot: needs matplotlib: pip install 'inik[plot]' (or matplotlib)", file=sys.stderr)
        return 2
    if curves["cut"] is not None:
        print(f"inik plot: {log_path}, line {curves['cut']}: a cut-off last row, left out", file=sys.stderr)
    title = str(run_dir).encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a name not in UTF-8
    try:
        with warnings.catch_warnings():  # matplotlib's overflow warnings come before its error
            warnings.simplefilter("ignore", RuntimeWarning)
            image = draw(curves, title)
    except (ValueError, OverflowError) as exc:  # values matplotlib cannot place (1e308 and -1e308)
        from .errors import first_line
        print(f"inik plot: cannot draw the curves of {log_path}: {first_line(exc)}", file=sys.stderr)
        return 2
    try:
        write_atomically(out, image)
    except OSError as exc:
        print(f"inik plot: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    print(f"inik plot: {out}")
    return 0
