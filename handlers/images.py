"""Images on the wire: PNG/JPEG bytes in, checked structurally before any pixel is decoded, and PNGs out.

The checks here bound the work one image can cost: a byte limit, a limit on
PNG chunks and on the JPEG segments Pillow walks in Python, and the header's
dimensions, all before decoding. EXIF orientation is applied, so a phone photo
is read the way it is displayed.
"""

from __future__ import annotations

import base64
import ctypes
import io
import struct
import warnings

import torch

from zoo_handlers.errors import RequestError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
#: More PNG chunks than this (real files have a handful, or a few dozen IDATs) are refused.
MAX_PNG_CHUNKS = 256
#: Segments and fill bytes before a JPEG's first scan, which Pillow parses one by one in Python.
MAX_JPEG_SEGMENTS = 256
_STANDALONE_JPEG_MARKERS = {0x01, *range(0xD0, 0xD8)}
_EXIF_ORIENTATION = 0x0112


def is_image(raw: bytes) -> bool:
    """Whether ``raw`` starts like a PNG or a JPEG."""
    return raw.startswith(PNG_MAGIC) or raw.startswith(JPEG_MAGIC)


def decode_image(raw: bytes, shape: tuple[int, int, int], *, max_bytes: int, max_side: int,
                 max_pixels: int) -> torch.Tensor:
    """PNG/JPEG bytes -> float (C, H, W) in [0, 1] for a model taking ``shape`` images.

    Raises RequestError: 413 for sizes over the limits, 415 for a format that is
    neither PNG nor JPEG, 400 for a broken, truncated or mis-shaped image.
    """
    from PIL import Image, ImageOps

    if len(raw) > max_bytes:
        raise RequestError(f"image of {len(raw)} bytes exceeds this model's limit of {max_bytes} bytes", 413)
    if raw.startswith(PNG_MAGIC):
        kind = "PNG"
        _check_png_structure(raw)
    elif raw.startswith(JPEG_MAGIC):
        kind = "JPEG"
        _check_jpeg_structure(raw)
    else:
        raise RequestError("unsupported image format: send a PNG or JPEG image", 415)
    channels, height, width = shape
    try:
        with warnings.catch_warnings():  # the limits below are stricter than Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=[kind])  # lazy: reads the header only
    except Image.DecompressionBombError:
        raise RequestError(f"the {kind} header declares more pixels than allowed", 413) from None
    except Exception as exc:
        raise RequestError(f"the {kind} header is broken: {_reason(exc)}") from None
    w, h = image.size
    if w > max_side or h > max_side or w * h > max_pixels:
        raise RequestError(f"image of {w}x{h} pixels exceeds the limit ({max_side} per side, {max_pixels} in all); "
                           f"this model takes {width}x{height}", 413)
    orientation = _orientation(image)
    if orientation in (5, 6, 7, 8):
        w, h = h, w  # displayed rotated by 90 degrees
    if (w, h) != (width, height):
        raise RequestError(f"image is {w}x{h} but this model takes {width}x{height} images")
    mode = image.mode
    accepted = {"L": "L", "1": "L", "P": None} if channels == 1 else {"RGB": "RGB", "YCbCr": "RGB", "P": None}
    wanted = "1-channel greyscale (L)" if channels == 1 else f"{channels}-channel RGB"
    if mode not in accepted:
        raise RequestError(f"image has mode {mode} ({len(image.getbands())} channel(s)) but this model takes "
                           f"{wanted} images")
    try:
        image.load()
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        if mode == "P":  # a palette: accepted only if it expands to the right channels
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            if image.mode == "RGBA" or (channels == 1 and not _is_grey(image)):
                raise RequestError(f"palette image expands to {image.mode} but this model takes {wanted} images")
            if channels == 1:
                image = image.convert("L")
        else:
            image = image.convert(accepted[mode])
        data = image.tobytes()
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError(f"the {kind} image data is truncated or corrupt: {_reason(exc)}") from None
    if len(data) != channels * height * width:
        raise RequestError("the decoded image has an unexpected size")
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(height, width, channels)
    return tensor.permute(2, 0, 1).float().div_(255.0)


def _check_png_structure(raw: bytes) -> None:
    pos, chunks = len(PNG_MAGIC), 0
    while pos + 8 <= len(raw):
        length, kind = struct.unpack_from(">I4s", raw, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise RequestError(f"the PNG has more than {MAX_PNG_CHUNKS} chunks")
        if kind == b"IEND":
            return
        pos += 12 + length


def _check_jpeg_structure(raw: bytes) -> None:
    pos, steps = 2, 0
    while pos + 1 < len(raw):
        steps += 1
        if steps > MAX_JPEG_SEGMENTS:
            raise RequestError(f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments before its image data")
        if raw[pos] != 0xFF:
            raise RequestError("the JPEG header is broken: data between segments")
        marker = raw[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker in _STANDALONE_JPEG_MARKERS:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the first scan: libjpeg takes over
            return
        if pos + 4 > len(raw):
            return  # truncated: Pillow reports it
        (length,) = struct.unpack_from(">H", raw, pos + 2)
        pos += 2 + length


def _orientation(image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def _is_grey(image) -> bool:
    r, g, b = image.split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def png_bytes(image: torch.Tensor) -> bytes:
    """Float (C, H, W) in [0, 1] -> PNG bytes (L for 1 channel, RGB for 3, RGBA for 4)."""
    from PIL import Image

    pixels = image.detach().float().cpu().nan_to_num(0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    c, h, w = pixels.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    pixels = pixels.permute(1, 2, 0).contiguous()
    data = ctypes.string_at(pixels.data_ptr(), pixels.numel())  # no numpy needed in the archive
    buffer = io.BytesIO()
    Image.frombytes(mode, (w, h), data).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_png(image: torch.Tensor) -> str:
    """Float (C, H, W) in [0, 1] -> base64 PNG."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def decode_png(data: str | bytes) -> torch.Tensor:
    """Inverse of :func:`encode_png` (base64 text, or raw PNG bytes) -> float (C, H, W) in [0, 1]."""
    from PIL import Image

    raw = data if isinstance(data, bytes) and data.startswith(PNG_MAGIC) else base64.b64decode(data)
    image = Image.open(io.BytesIO(raw))
    image.load()
    c = len(image.getbands())
    w, h = image.size
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, c)
    return t.permute(2, 0, 1).float() / 255.0
