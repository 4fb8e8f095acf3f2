"""The ``inik`` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which defines
``configure_parser(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "deblur": ("inik.infer", "deblur photos (files, folders, globs) with INIKNet"),
    "explain": ("inik.explain", "write the defocus-size, mu, omega and atom maps of a photo as PNGs"),
    "train": ("inik.train", "train INIKNet (paper protocol; synthetic, folder, DPDD or LFDOF data)"),
    "eval": ("inik.evaluate", "PSNR / SSIM / MAE / LPIPS of a model on a paired folder"),
    "synth": ("inik.synth", "write a fixed synthetic evaluation set (blurry/sharp pairs) from photos or scenes"),
    "plot": ("inik.plot", "draw a training run's loss and PSNR curves (RUN/log.csv) to a PNG"),
    "export": ("inik.export", "write INIKNet as a torch.export program (.pt2), an AOTInductor package or ONNX"),
    "info": ("inik.info", "versions, compiled kernels, devices and weights of this installation"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="inik", description="INIKNet defocus deblurring.")
    parser.add_argument("--version", action="version", version=f"inik {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure_parser(p)
    return parser


def _note_missing_extension() -> None:
    """Say so when the compiled kernels are missing (a failed build installs without
    them, and pip shows the build's warning only with -v): everything still runs,
    several times slower on a CPU."""
    from . import settings
    from .ops import _ext
    if not _ext.is_built() and not settings.get(_ext.NO_EXTENSION_ENV):
        print(f"inik: note: running without the compiled kernels, several times slower on a CPU: "
              f"{_ext.build_hint()}", file=sys.stderr)


#: exit status after Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (0 done, 1 some items failed, 2 bad usage or
    nothing could be done, 130 interrupted - Ctrl-C prints one line, no traceback)."""
    from .settings import SettingError
    name = "inik"
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a file name that is not UTF-8 prints escaped
    shown = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):  # not the source line under it
        print(f"{name}: warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line
    try:
        args = build_parser().parse_args(argv)
        name = f"inik {args.command}"
        from .runtime import keep_freed_memory
        keep_freed_memory()  # faster CPU forwards (see its docstring); INIK_MALLOC=system opts out
        if args.command != "info":  # which says so itself
            _note_missing_extension()
        status = int(importlib.import_module(args._module).run(args) or 0)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return status
    except SettingError as exc:  # an INIK_* variable with a value it does not take: bad usage
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:  # stdout's reader went away (``inik info --json | head -c 10``)?
        from .commands import stop_stdout
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # it did: nobody to tell
            stop_stdout()
            return 1
        print(f"{name}: {exc}", file=sys.stderr)  # another pipe
        return 1
    except KeyboardInterrupt as exc:  # a command may say what it finished: KeyboardInterrupt("interrupted after ...")
        newline = "\n" if sys.stderr.isatty() else ""  # off the line of ^C or a progress bar
        print(f"{newline}{name}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
