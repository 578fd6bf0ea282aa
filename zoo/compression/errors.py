"""Errors raised when a ``.zae`` file cannot be restored; each names the file and the problem."""

from zoo.errors import ZooError


class CompressedFileError(ZooError):
    """A ``.zae`` file cannot be decompressed."""


class NotCompressedFileError(CompressedFileError):
    """The file does not start with the ``.zae`` magic bytes, or has an unknown format version."""


class TruncatedFileError(CompressedFileError):
    """The file ends before the header, payload or checksum it declares."""


class CorruptFileError(CompressedFileError):
    """The checksum does not match, or a field holds an impossible value."""


class ModelMismatchError(CompressedFileError):
    """The file was written with a model whose weights differ from the model given to decompress it."""
