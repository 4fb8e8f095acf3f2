"""Data: bit-depth-true image I/O (:mod:`.io`), paired datasets from folders
(:mod:`.pairs`) and synthetic defocus (:mod:`.synthetic`)."""

from .io import (
    ImageInfo,
    ImageReadError,
    image_to_tensor,
    is_float_image,
    list_images,
    read_image,
    read_image_info,
    tensor_to_image,
    write_image,
)
from .pairs import ImagePair, PairedImageDataset, PairingError, find_pairs, pair_folders
from .synthetic import (
    DefocusSample,
    DefocusSynthesizer,
    SyntheticConfig,
    SyntheticDefocusDataset,
    SyntheticDefocusStream,
    export_synthetic_pairs,
    select_photos,
    split_photos,
)

__all__ = [
    "ImageInfo",
    "ImageReadError",
    "image_to_tensor",
    "is_float_image",
    "list_images",
    "read_image",
    "read_image_info",
    "tensor_to_image",
    "write_image",
    "ImagePair",
    "PairedImageDataset",
    "PairingError",
    "find_pairs",
    "pair_folders",
    "DefocusSample",
    "DefocusSynthesizer",
    "SyntheticConfig",
    "SyntheticDefocusDataset",
    "SyntheticDefocusStream",
    "split_photos",
    "select_photos",
    "export_synthetic_pairs",
]
