"""INIKNet and its parts."""

from .dictionary import Dictionary
from .iniknet import INIKNet, INIKNetConfig, Interpretation

__all__ = ["Dictionary", "INIKNet", "INIKNetConfig", "Interpretation"]
