"""The ``.zae`` file format, version 1: one image as a model's quantized, entropy-coded latent.

All integers are little-endian. In order:

======================  =========================  ===============================================
field                   size                       content
======================  =========================  ===============================================
magic                   4 bytes                    ``89 5A 41 45`` (``\\x89ZAE``)
format version          uint8                      1
model name              uint8 length + UTF-8       what ``zoo.load`` resolves: a pretrained name,
                                                   a checkpoint folder or ``hf://ORG/NAME``
weights sha256          32 bytes                   sha256 of the model's ``model.safetensors``
image shape             uint8 C, uint16 H, W       the original image; it is resized back to this
latent dim              uint16                     length of the model's latent vector
flags                   uint8                      bit 0: sigma codes present; bit 1: payload is
                                                   raw DEFLATE; other bits must be 0
Exp-Golomb order        uint8                      0-15 (see :mod:`zoo.compression.entropy`)
step                    float32                    base quantization step
kept mask               ceil(latent dim / 8)       bit ``d % 8`` of byte ``d // 8``: dim d is kept
sigma codes             ceil(kept dims / 2)        if flag bit 0: 4 bits per kept dim, low nibble
                                                   first (see :mod:`zoo.compression.quantize`)
payload length          uint16                     bytes of payload
payload                 payload length             the kept dims' integers, entropy-coded
crc32                   uint32                     ``zlib.crc32`` of every byte before it
======================  =========================  ===============================================

The CRC covers the header as well as the payload, so any changed byte (CRC-32 catches every
error burst of up to 32 bits) is reported instead of decoding to a wrong image, and the
sha256 makes a different model refuse the file instead of decoding it to noise.
"""

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from zoo.compression.entropy import MAX_ORDER, decode_symbols, encode_symbols
from zoo.compression.errors import CorruptFileError, NotCompressedFileError, TruncatedFileError
from zoo.compression.quantize import Quantized

MAGIC = b"\x89ZAE"
VERSION = 1
SUFFIX = ".zae"
HAS_SIGMA, DEFLATED = 1, 2


@dataclass(frozen=True)
class CompressedImage:
    """Everything a ``.zae`` file holds."""

    model_name: str
    weights_sha256: str
    shape: tuple[int, int, int]
    latent_dim: int
    quantized: Quantized


def pack(record: CompressedImage) -> bytes:
    """The bytes of a ``.zae`` file for ``record``."""
    q = record.quantized
    name = record.model_name.encode()
    if len(name) > 255:
        raise ValueError(f"model name {record.model_name!r} is longer than 255 bytes")
    payload, order, deflated = encode_symbols(list(q.symbols))
    flags = (HAS_SIGMA if q.sigma_codes is not None else 0) | (DEFLATED if deflated else 0)
    mask = bytearray((record.latent_dim + 7) // 8)
    for d in q.kept:
        mask[d // 8] |= 1 << (d % 8)
    body = b"".join([
        MAGIC, bytes([VERSION, len(name)]), name, bytes.fromhex(record.weights_sha256),
        struct.pack("<BHHHBBf", *record.shape, record.latent_dim, flags, order, q.step), bytes(mask),
        _nibbles(q.sigma_codes or ()), struct.pack("<H", len(payload)), payload,
    ])
    return body + struct.pack("<I", zlib.crc32(body))


def _nibbles(codes: tuple[int, ...]) -> bytes:
    """Four-bit codes packed two to a byte, low nibble first."""
    padded = [*codes, 0][: len(codes) + len(codes) % 2]
    return bytes(padded[i] | padded[i + 1] << 4 for i in range(0, len(padded), 2))


class _Reader:
    """Reads fields in order; running out of bytes is a TruncatedFileError naming the field."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int, field: str) -> bytes:
        if self.pos + size > len(self.data):
            raise TruncatedFileError(f"{self.path}: file is truncated: it ends inside the {field} "
                                     f"(byte {len(self.data)} of at least {self.pos + size})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, field: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field))


def unpack(data: bytes, path: str | Path) -> CompressedImage:
    """Parse and verify a ``.zae`` file; every problem raises a CompressedFileError naming ``path``."""
    path = Path(path)
    reader = _Reader(data, path)
    if reader.take(len(MAGIC), "magic bytes") != MAGIC:
        raise NotCompressedFileError(f"{path}: not a .zae file (it does not start with the magic bytes {MAGIC!r})")
    version, name_length = reader.unpack("<BB", "format version")
    if version != VERSION:
        raise NotCompressedFileError(f"{path}: .zae format version {version}; this ae-zoo reads version {VERSION}")
    name_bytes = reader.take(name_length, "model name")
    sha = reader.take(32, "weights sha256").hex()
    channels, height, width, latent_dim, flags, order, step = reader.unpack("<BHHHBBf", "image header")
    mask = reader.take((latent_dim + 7) // 8, "kept-dimension mask")
    kept = tuple(d for d in range(latent_dim) if mask[d // 8] >> (d % 8) & 1)
    codes = None
    if flags & HAS_SIGMA:
        packed = reader.take((len(kept) + 1) // 2, "sigma codes")
        codes = tuple(packed[i // 2] >> (4 * (i % 2)) & 15 for i in range(len(kept)))
    (payload_length,) = reader.unpack("<H", "payload length")
    payload = reader.take(payload_length, "payload")
    (crc,) = reader.unpack("<I", "crc32")
    if reader.pos != len(data):
        raise CorruptFileError(f"{path}: file is corrupt: {len(data) - reader.pos} unexpected bytes after the crc32")
    if zlib.crc32(data[:-4]) != crc:
        raise CorruptFileError(f"{path}: file is corrupt: crc32 mismatch (stored {crc:08x}, "
                               f"computed {zlib.crc32(data[:-4]):08x})")
    problems = [text for bad, text in [
        (flags & ~(HAS_SIGMA | DEFLATED), f"unknown flags {flags:#04x}"), (order > MAX_ORDER, f"Exp-Golomb order {order}"),
        (min(channels, height, width, latent_dim) == 0, "a zero image shape or latent dim"),
        (not step > 0, f"step {step}"),
    ] if bad]
    try:
        model_name = name_bytes.decode()
        symbols = decode_symbols(payload, len(kept), order, bool(flags & DEFLATED))
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(str(exc))
    if problems:
        raise CorruptFileError(f"{path}: file is corrupt: {'; '.join(problems)}")
    return CompressedImage(model_name, sha, (channels, height, width), latent_dim, Quantized(kept, codes, step, tuple(symbols)))
