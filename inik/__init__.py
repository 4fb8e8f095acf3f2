"""inik: single-image defocus deblurring with INIKNet (Quan, Yao, Ji, ICCV 2023)."""

__version__ = "0.1.0"

# infer: the deblur command, and the names it held before the split (inik.infer.load_model ...)
from . import infer, ops  # noqa: E402, F401
from .api import deblur  # noqa: E402
from .models import INIKNet, INIKNetConfig  # noqa: E402

__all__ = ["INIKNet", "INIKNetConfig", "deblur", "ops", "__version__"]
