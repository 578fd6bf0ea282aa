"""The ``.zae`` file format, version 2: one image as a model's quantized latent, plus an optional residual.

Integers are unsigned; ``varint`` is LEB128 (7 bits per byte, low first, high bit = more follow).

=================  ==================  ==========================================================
field              size                content
=================  ==================  ==========================================================
magic              2 bytes             ``89 5A`` (``\\x89Z``)
format version     1 byte              2
flags              1 byte              bit 0: a residual layer follows the latent; bit 1: the
                                       original image shape is stored (else it is the model's
                                       input shape); other bits 0
file length        varint              bytes in the whole file, this field included
model name         1 byte + n          low 7 bits: its length L; high bit set: L characters of
                                       ``a-z0-9-`` packed as a base-37 number, little-endian, in
                                       ``ceil(L log2(37) / 8)`` bytes (14 characters: 10 bytes);
                                       clear: L bytes of UTF-8
weights            8 bytes             the first 8 bytes of the sha256 of ``model.safetensors``
latent dim         varint              length of the model's latent vector
latent step        1 byte              code 0-72: step ``2 ** (code / 8 - 6)`` prior stds
residual step      1 byte              if flag bit 0: D in 1-255 (1 = lossless)
image shape        3 varints           if flag bit 1: C, H, W of the original image (C <= 4,
                                       H x W <= 2**27)
payload            to the checksums    range-coded (:mod:`zoo.compression.entropy`), 32-bit
                                       big-endian words: the kept-dimension bits, the kept
                                       coordinates, then the residual (:mod:`~zoo.compression.residual`)
image crc32        4 bytes             if flag bit 0: ``zlib.crc32`` of the decoded 8-bit image
                                       (C x H x W bytes at the model's input shape)
crc32              4 bytes             ``zlib.crc32`` of every byte before it
=================  ==================  ==========================================================

**What each check catches.** The file length tells a truncated file from a corrupt one. The
crc32 of the file catches any changed byte before anything is decoded (every error burst of up
to 32 bits, and all other damage but for a 2**-32 chance). The 8-byte weights fingerprint makes
another model refuse the file: two different weight files share it with probability 2**-64,
which is ample against accidents (not against someone forging weights to collide on purpose);
and when the file names a registered model, loading it checks the full sha256 of its weights
against the registry's pin, so a decoded file is tied to the exact pinned weights. The image
crc32 is checked after decoding a residual layer: the residual is coded against the model's
prediction, which must be the same on the decoding machine (see :mod:`zoo.compression.codec`);
if it is not, the mismatch is reported instead of returning a wrong image.

Version 1 files (``89 5A 41 45 01``: 4 magic bytes, the full sha256, the Exp-Golomb latent of
the first ``zoo compress``) are recognised and refused with a message saying so.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from zoo.compression.errors import CorruptFileError, NotCompressedFileError, TruncatedFileError, UnsupportedVersionError
from zoo.compression.quantize import STEP_CODES
from zoo.compression.residual import MAX_STEP

MAGIC = b"\x89Z"
VERSION = 2
LEGACY_MAGIC = b"\x89ZAE"
SUFFIX = ".zae"
RESIDUAL, SHAPE = 1, 2
FINGERPRINT_BYTES = 8
NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-"
PACKED = 0x80
MAX_NAME = 0x7F
CHECK_BYTES = 4
#: Largest original image a file may ask to be restored to (a forged shape must not allocate gigabytes).
MAX_CHANNELS, MAX_PIXELS = 4, 1 << 27


@dataclass(frozen=True)
class Header:
    """The fields of a ``.zae`` file around its payload."""

    model_name: str
    fingerprint: bytes
    latent_dim: int
    step_code: int
    residual_step: int = 0  # 0: latent only
    shape: tuple[int, int, int] | None = None  # None: the model's input shape


def fingerprint(sha256: str) -> bytes:
    """The weights fingerprint a file stores for a sha256 (hex)."""
    return bytes.fromhex(sha256)[:FINGERPRINT_BYTES]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packed_size(length: int) -> int:
    return ((len(NAME_ALPHABET) ** length - 1).bit_length() + 7) // 8


def _name_field(name: str) -> bytes:
    if name and len(name) <= MAX_NAME and all(ch in NAME_ALPHABET for ch in name):
        number = 0
        for ch in reversed(name):
            number = number * len(NAME_ALPHABET) + NAME_ALPHABET.index(ch)
        return bytes([PACKED | len(name)]) + number.to_bytes(_packed_size(len(name)), "little")
    raw = name.encode()
    if not raw or len(raw) > MAX_NAME:
        raise ValueError(f"model name {name!r} must be 1-{MAX_NAME} bytes of UTF-8 to be stored in a .zae file")
    return bytes([len(raw)]) + raw


def pack(header: Header, payload: bytes, image_crc: int | None = None) -> bytes:
    """The bytes of a ``.zae`` file; ``image_crc`` is required exactly when there is a residual layer."""
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"the weights fingerprint must be {FINGERPRINT_BYTES} bytes")
    if header.step_code not in STEP_CODES or not 0 <= header.residual_step <= MAX_STEP:
        raise ValueError(f"invalid step code {header.step_code} or residual step {header.residual_step}")
    if (image_crc is None) != (header.residual_step == 0):
        raise ValueError("an image crc32 goes with a residual layer, and only with one")
    if header.shape is not None and _bad_shape(header.shape):
        raise ValueError(f"image shape {header.shape} is outside what a .zae file holds "
                         f"(1-{MAX_CHANNELS} channels, at most {MAX_PIXELS} pixels)")
    flags = (RESIDUAL if header.residual_step else 0) | (SHAPE if header.shape is not None else 0)
    body = [_name_field(header.model_name), header.fingerprint, varint(header.latent_dim), bytes([header.step_code])]
    if header.residual_step:
        body.append(bytes([header.residual_step]))
    if header.shape is not None:
        body += [varint(v) for v in header.shape]
    body.append(payload)
    if image_crc is not None:
        body.append(struct.pack("<I", image_crc))
    rest = b"".join(body)
    fixed = len(MAGIC) + 2 + len(rest) + CHECK_BYTES
    length = fixed + 1
    while len(varint(length)) != length - fixed:
        length += 1
    data = MAGIC + bytes([VERSION, flags]) + varint(length) + rest
    return data + struct.pack("<I", zlib.crc32(data))


class _Reader:
    """Reads fields in order; running out of bytes is a TruncatedFileError naming the field."""

    def __init__(self, data: bytes, path: Path, end: int):
        self.data, self.path, self.pos, self.end = data, path, 0, end

    def take(self, size: int, field: str) -> bytes:
        if self.pos + size > self.end:
            raise TruncatedFileError(f"{self.path}: file is truncated: it ends inside the {field} "
                                     f"(byte {len(self.data)} of at least {self.pos + size})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def varint(self, field: str) -> int:
        value = 0
        for shift in range(0, 35, 7):
            (byte,) = self.take(1, field)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise CorruptFileError(f"{self.path}: file is corrupt: the {field} is not a minimal varint")
                return value
        raise CorruptFileError(f"{self.path}: file is corrupt: the {field} is longer than 5 bytes")


def unpack(data: bytes, path: str | Path) -> tuple[Header, bytes, int | None]:
    """(header, payload, image crc32 or None) of a ``.zae`` file, after checking its length and crc32.

    Every problem raises a :class:`~zoo.compression.errors.CompressedFileError` naming ``path``.
    """
    path = Path(path)
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise NotCompressedFileError(f"{path}: not a .zae file (it does not start with the magic bytes {MAGIC!r})")
    if data[:len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        version = data[len(LEGACY_MAGIC)] if len(data) > len(LEGACY_MAGIC) else 1
        raise UnsupportedVersionError(
            f"{path}: .zae format version {version}, written by an earlier development version of ae-zoo; "
            f"this ae-zoo reads version {VERSION} only: compress the original image again")
    reader = _Reader(data, path, len(data))
    reader.take(len(MAGIC), "magic bytes")
    (version,) = reader.take(1, "format version")
    if version != VERSION:
        raise UnsupportedVersionError(f"{path}: .zae format version {version}; this ae-zoo reads version {VERSION}")
    (flags,) = reader.take(1, "flags")
    length = reader.varint("file length")
    if len(data) < length:
        raise TruncatedFileError(f"{path}: file is truncated: it has {len(data)} of the {length} bytes its header declares")
    if len(data) > length:
        raise CorruptFileError(f"{path}: file is corrupt: {len(data) - length} unexpected bytes after its "
                               f"declared end (byte {length})")
    if length < reader.pos + CHECK_BYTES:
        raise CorruptFileError(f"{path}: file is corrupt: its declared length {length} is too short")
    (crc,) = struct.unpack("<I", data[-CHECK_BYTES:])
    if zlib.crc32(data[:-CHECK_BYTES]) != crc:
        raise CorruptFileError(f"{path}: file is corrupt: crc32 mismatch (stored {crc:08x}, "
                               f"computed {zlib.crc32(data[:-CHECK_BYTES]):08x})")
    # From here on the bytes are as written, so a bad field is a file written wrongly or forged.
    reader.end = len(data) - CHECK_BYTES
    if flags & ~(RESIDUAL | SHAPE):
        raise CorruptFileError(f"{path}: file is corrupt: unknown flags {flags:#04x}")
    name = _read_name(reader, path)
    weights = reader.take(FINGERPRINT_BYTES, "weights fingerprint")
    latent_dim = reader.varint("latent dim")
    (code,) = reader.take(1, "latent step")
    residual_step = reader.take(1, "residual step")[0] if flags & RESIDUAL else 0
    shape = tuple(reader.varint("image shape") for _ in range(3)) if flags & SHAPE else None
    problems = [text for bad, text in [
        (latent_dim == 0, "latent dim 0"), (code not in STEP_CODES, f"latent step code {code}"),
        (flags & RESIDUAL and residual_step == 0, "residual step 0"),
        (shape is not None and _bad_shape(shape), f"image shape {shape}"),
    ] if bad]
    if problems:
        raise CorruptFileError(f"{path}: file is corrupt: {'; '.join(problems)}")
    image_crc = None
    if flags & RESIDUAL:
        reader.end -= CHECK_BYTES
        if reader.end < reader.pos:
            raise CorruptFileError(f"{path}: file is corrupt: no room for the image crc32")
        (image_crc,) = struct.unpack("<I", data[reader.end:reader.end + CHECK_BYTES])
    payload = data[reader.pos:reader.end]
    return Header(name, weights, latent_dim, code, residual_step, shape), payload, image_crc


def _bad_shape(shape: tuple[int, int, int]) -> bool:
    channels, height, width = shape
    return not (1 <= channels <= MAX_CHANNELS and height >= 1 and width >= 1 and height * width <= MAX_PIXELS)


def _read_name(reader: _Reader, path: Path) -> str:
    (first,) = reader.take(1, "model name")
    length = first & MAX_NAME
    if length == 0:
        raise CorruptFileError(f"{path}: file is corrupt: empty model name")
    if first & PACKED:
        number = int.from_bytes(reader.take(_packed_size(length), "model name"), "little")
        if number >= len(NAME_ALPHABET) ** length:
            raise CorruptFileError(f"{path}: file is corrupt: the packed model name is out of range")
        chars = []
        for _ in range(length):
            number, digit = divmod(number, len(NAME_ALPHABET))
            chars.append(NAME_ALPHABET[digit])
        return "".join(chars)
    try:
        return reader.take(length, "model name").decode()
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path}: file is corrupt: the model name is not UTF-8") from None


def header_size(header: Header) -> int:
    """Bytes of a file for ``header`` with an empty payload: what the format costs around the payload."""
    return len(pack(header, b"", 0 if header.residual_step else None))

