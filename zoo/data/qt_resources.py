"""Read files out of a compiled Qt resource bundle (``.rcc``), as some Debian packages ship their images.

A bundle starts with ``qres``, a format version (1 to 3) and the offsets of three tables (all
big-endian): the tree of nodes, the file data and the names. A node is a name offset, flags and either
a child count with the index of its first child (a directory, flag 2) or a data offset (a file). A
file's data is its size and its bytes, zlib-compressed behind a 4-byte length when flag 1 is set.
Everything read is bounds-checked, so a truncated or damaged bundle is a :class:`DataError`, never a
wrong file.
"""

import struct
import zlib
from pathlib import Path

from zoo.errors import DataError

_MAGIC = b"qres"
_COMPRESSED, _DIRECTORY, _ZSTD = 1, 2, 4


class _Bundle:
    def __init__(self, blob: bytes, where: str):
        self.blob, self.where = blob, where
        if blob[:4] != _MAGIC:
            raise DataError(f"{where} is not a Qt resource bundle (it does not start with {_MAGIC!r})")
        version, self.tree, self.data, self.names = self.unpack(">IIII", 4)
        if not 1 <= version <= 3:
            raise DataError(f"{where}: Qt resource format version {version} is not one this reader knows (1-3)")
        self.node_size = 14 if version == 1 else 22  # versions 2 and 3 add a modification time

    def unpack(self, layout: str, offset: int) -> tuple:
        end = offset + struct.calcsize(layout)
        if offset < 0 or end > len(self.blob):
            raise DataError(f"{self.where} is truncated: a record at byte {offset} runs past its end")
        return struct.unpack_from(layout, self.blob, offset)

    def take(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > len(self.blob):
            raise DataError(f"{self.where} is truncated: {size} bytes at byte {offset} run past its end")
        return self.blob[offset:offset + size]

    def name(self, offset: int) -> str:
        (length,) = self.unpack(">H", self.names + offset)
        return self.take(self.names + offset + 6, 2 * length).decode("utf-16-be")  # after the length and a hash

    def files(self, index: int = 0, prefix: str = "", depth: int = 0):
        """Yield ``(path, node offset)`` for every file under node ``index``."""
        if depth > 64:
            raise DataError(f"{self.where}: its directory tree is deeper than 64 levels (a loop?)")
        node = self.tree + index * self.node_size
        name_offset, flags = self.unpack(">IH", node)
        path = f"{prefix}/{self.name(name_offset)}" if index else ""
        if flags & _DIRECTORY:
            count, first = self.unpack(">II", node + 6)
            for child in range(first, first + count):
                yield from self.files(child, path, depth + 1)
        else:
            yield path, node

    def content(self, path: str, node: int) -> bytes:
        (flags,) = self.unpack(">H", node + 4)
        (offset,) = self.unpack(">I", node + 10)
        (size,) = self.unpack(">I", self.data + offset)
        payload = self.take(self.data + offset + 4, size)
        if flags & _ZSTD:
            raise DataError(f"{self.where}: {path} is zstd-compressed, which this reader does not handle")
        if not flags & _COMPRESSED:
            return payload
        if size < 4:
            raise DataError(f"{self.where}: {path} is marked compressed but holds only {size} bytes")
        (expected,) = struct.unpack_from(">I", payload)
        try:
            content = zlib.decompress(payload[4:])
        except zlib.error as e:
            raise DataError(f"{self.where}: {path} does not decompress ({e})") from e
        if len(content) != expected:
            raise DataError(f"{self.where}: {path} decompressed to {len(content)} bytes, its header says {expected}")
        return content


def read_qt_resources(bundle: Path, wanted: set[str] | None = None) -> dict[str, bytes]:
    """``{":/path/in/bundle": content}`` for every file in ``bundle``, or only the ``wanted`` paths.

    Raises :class:`DataError` when the file is not a bundle, is damaged, or lacks a wanted path.
    """
    reader = _Bundle(bundle.read_bytes(), str(bundle))
    found = {f":{path}": node for path, node in reader.files()}
    missing = sorted((wanted or set()) - found.keys())
    if missing:
        raise DataError(f"{bundle} has no {', '.join(missing[:3])}" + (f" (and {len(missing) - 3} more)"
                                                                         if len(missing) > 3 else ""))
    return {path: reader.content(path, node) for path, node in found.items() if wanted is None or path in wanted}
