"""Errors raised when a ``.zae`` file cannot be restored; each names the file and the problem."""

from zoo.errors import ZooError


class CompressedFileError(ZooError):
    """A ``.zae`` file cannot be decompressed."""


class NotCompressedFileError(CompressedFileError):
    """The file does not start with the ``.zae`` magic bytes."""


class UnsupportedVersionError(NotCompressedFileError):
    """The file is a ``.zae`` file of a format version this ae-zoo does not read."""


class TruncatedFileError(CompressedFileError):
    """The file ends before the length its header declares, or inside the header."""


class CorruptFileError(CompressedFileError):
    """The checksum does not match, or a field holds an impossible value."""


class ModelMismatchError(CompressedFileError):
    """The file was written with a model whose weights differ from the model given to decompress it."""


class DecoderMismatchError(CompressedFileError):
    """The decoded image does not match the checksum stored when it was compressed.

    The residual layer is coded against the model's prediction; this machine computed a
    different one than the machine that wrote the file (another CPU, torch or library build).
    """
