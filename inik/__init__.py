"""inik: single-image defocus deblurring with INIKNet (Quan, Yao, Ji, ICCV 2023)."""

from . import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
