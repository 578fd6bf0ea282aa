"""Compressing images with a model's encoder and restoring them with its decoder.

:mod:`~zoo.compression.format` documents the ``.zae`` file format; :mod:`~zoo.compression.quantize`
the rate control and :mod:`~zoo.compression.entropy` the entropy code.
"""

from zoo.compression.codec import Codec, weights_sha256
from zoo.compression.errors import (
    CompressedFileError,
    CorruptFileError,
    ModelMismatchError,
    NotCompressedFileError,
    TruncatedFileError,
)
from zoo.compression.format import SUFFIX, CompressedImage, pack, unpack

__all__ = [
    "SUFFIX",
    "Codec",
    "CompressedFileError",
    "CompressedImage",
    "CorruptFileError",
    "ModelMismatchError",
    "NotCompressedFileError",
    "TruncatedFileError",
    "pack",
    "unpack",
    "weights_sha256",
]
