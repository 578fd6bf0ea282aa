"""sha256 hashing and verification of dataset files."""

import hashlib
from collections.abc import Mapping
from pathlib import Path

from zoo.errors import DataError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: str) -> None:
    """Check ``path`` against its ``expected`` sha256; on mismatch delete it and raise DataError.

    The error names the file and both hashes. Nothing that failed the check is kept.
    """
    actual = sha256_file(path)
    if actual != expected:
        path.unlink()
        raise DataError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {actual}; deleted {path}"
        )


def combined_sha256(digests: Mapping[str, str]) -> str:
    """Return one sha256 over a set of ``{file name: sha256}`` pairs, independent of order."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()
