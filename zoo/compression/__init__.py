"""Compressing images with a model's encoder and restoring them with its decoder.

:mod:`~zoo.compression.format` documents the ``.zae`` file format; :mod:`~zoo.compression.quantize`
the latent's rate control, :mod:`~zoo.compression.residual` the residual layer and
:mod:`~zoo.compression.entropy` the entropy coding.
"""

from zoo.compression.codec import Codec, CompressedImage, weights_sha256
from zoo.compression.errors import (
    CompressedFileError,
    CorruptFileError,
    DecoderMismatchError,
    ModelMismatchError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from zoo.compression.format import SUFFIX, Header, pack, unpack

__all__ = [
    "SUFFIX",
    "Codec",
    "CompressedFileError",
    "CompressedImage",
    "CorruptFileError",
    "DecoderMismatchError",
    "Header",
    "ModelMismatchError",
    "NotCompressedFileError",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "pack",
    "unpack",
    "weights_sha256",
]
