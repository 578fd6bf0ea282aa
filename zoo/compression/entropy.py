"""Entropy coding of quantized latents: zigzag + Exp-Golomb bit codes, then raw DEFLATE if that is shorter.

A quantized latent is a short vector of small signed integers, mostly near zero (the prior
is a standard normal). Each integer is zigzagged to ``n >= 0`` and written as an order-``k``
Exp-Golomb code: ``n + 2**k`` in binary, preceded by as many zeros as it has bits beyond ``k + 1``.
This costs about ``2*log2(n) - k`` bits per value, so values near zero take 1-3 bits, and
the best ``k`` (0-15) is chosen per latent. Codes are packed MSB first into bytes.

General-purpose compressors do not help on MNIST-sized latents (10-30 values: DEFLATE's
block overhead alone is larger than the saving), but for large latents the bit string is
also tried through a raw DEFLATE stream (``zlib``, ``wbits=-15``, standard library) and kept
if shorter; the ``deflated`` flag says which. No third-party coder is needed: an arithmetic
coder would save at most ~1 bit per value over these codes and add a dependency.
"""

import zlib

MAX_ORDER = 15


def _zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def _unzigzag(n: int) -> int:
    return n // 2 if n % 2 == 0 else -(n + 1) // 2


def _bit_string(symbols: list[int], k: int) -> str:
    codes = []
    for value in symbols:
        word = _zigzag(value) + (1 << k)
        codes.append("0" * (word.bit_length() - k - 1) + format(word, "b"))
    return "".join(codes)


def encode_symbols(symbols: list[int]) -> tuple[bytes, int, bool]:
    """(payload, Exp-Golomb order, deflated) for the shortest coding of ``symbols``."""
    k, bits = min(((k, _bit_string(symbols, k)) for k in range(MAX_ORDER + 1)), key=lambda kb: len(kb[1]))
    padded = bits + "1" * (-len(bits) % 8)  # padding with ones can never be read as another code start
    packed = int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(packed) + compressor.flush()
    return (deflated, k, True) if len(deflated) < len(packed) else (packed, k, False)


def decode_symbols(payload: bytes, count: int, k: int, deflated: bool) -> list[int]:
    """The ``count`` integers in ``payload``; ValueError if it holds too few or malformed codes."""
    if deflated:
        decompressor = zlib.decompressobj(-15)
        try:
            payload = decompressor.decompress(payload) + decompressor.flush()
        except zlib.error as exc:
            raise ValueError(f"the DEFLATE stream is invalid ({exc})") from None
        if not decompressor.eof or decompressor.unused_data:
            raise ValueError("the DEFLATE stream is incomplete or followed by extra bytes")
    bits = "".join(format(byte, "08b") for byte in payload)
    symbols, pos = [], 0
    for _ in range(count):
        zeros = 0
        while pos + zeros < len(bits) and bits[pos + zeros] == "0":
            zeros += 1
        end = pos + zeros + zeros + k + 1
        if end > len(bits):
            raise ValueError(f"the payload ends after {len(symbols)} of {count} values")
        symbols.append(_unzigzag(int(bits[pos + zeros:end], 2) - (1 << k)))
        pos = end
    if len(bits) - pos >= 8 or "0" in bits[pos:]:
        raise ValueError("the payload holds extra bits after the last value")
    return symbols
