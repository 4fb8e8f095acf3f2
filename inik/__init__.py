"""inik: single-image defocus deblurring with INIKNet (Quan, Yao, Ji, ICCV 2023)."""

__version__ = "0.1.0"

import os as _os
import sys as _sys


def _is_the_command() -> bool:
    """Whether this process is the ``inik`` command: its console script, or ``python -m inik``
    (argv[0] is "-m" while the package imports; the interpreter's own -m is its first)."""
    if _os.path.basename(_sys.argv[0]) in ("inik", "inik.exe"):
        return True
    if _sys.argv[:1] != ["-m"]:
        return False
    orig = getattr(_sys, "orig_argv", [])
    for i, arg in enumerate(orig[1:], 1):
        if arg.startswith("-m"):
            return arg == "-minik" or (arg == "-m" and orig[i + 1:i + 2] == ["inik"])
    return False


try:
    # infer: the deblur command, and the names it held before the split (inik.infer.load_model ...)
    from . import infer, ops  # noqa: E402, F401
    from .api import deblur  # noqa: E402
    from .models import INIKNet, INIKNetConfig  # noqa: E402
except KeyboardInterrupt:
    # Ctrl-C while the ``inik`` command imports torch (seconds): one line and 130, as inik.cli.main
    # answers it later, not a traceback through torch's import
    if _is_the_command():
        print("\ninik: interrupted" if _sys.stderr.isatty() else "inik: interrupted", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__all__ = ["INIKNet", "INIKNetConfig", "deblur", "ops", "__version__"]
