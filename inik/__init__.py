"""inik: single-image defocus deblurring with INIKNet (Quan, Yao, Ji, ICCV 2023)."""

__version__ = "0.1.0"

from . import ops  # noqa: E402
from .api import deblur  # noqa: E402
from .models import INIKNet, INIKNetConfig  # noqa: E402

__all__ = ["INIKNet", "INIKNetConfig", "deblur", "ops", "__version__"]
