"""Writing TorchServe's ``config.properties`` safely: paths, escapes and the ``allowed_urls`` pattern.

Java reads the file as ISO-8859-1 with backslash escapes, and TorchServe splits
``allowed_urls`` at commas and matches each pattern against a whole URL, ignoring
case. So a path goes in only if it has plain characters, a backslash is doubled,
and the pattern admits nothing but a plain ``.mar`` name inside the model store.
"""

from __future__ import annotations

import re
from pathlib import Path

from zoo.serving.package import ServingError

# A .mar file name that ``allowed_urls`` accepts: dot-separated segments of letters, digits, "_" and "-",
# so no "/", "..", "%" (Java decodes %2e in file URLs) or backslash can reach outside the model store.
MAR_NAME_PATTERN = r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.mar"
# The characters a store path may have in config.properties. Java reads that file as ISO-8859-1 with
# backslash escapes and splits allowed_urls at commas, so anything else could change what it says.
PROPERTY_PATH = re.compile(r"[A-Za-z0-9 _.+@~/-]+")


def property_path(path: Path) -> str:
    """``path`` for config.properties; a ServingError if it has characters that would change its meaning there."""
    text = str(path)
    if not PROPERTY_PATH.fullmatch(text):
        raise ServingError(f"{text}: TorchServe cannot be configured safely with this path; use a run directory "
                           "(--dir or ZOO_SERVE_DIR) whose path has only ASCII letters, digits, spaces and _.+@~/-")
    return text


def allowed_urls(store: Path) -> str:
    """The ``allowed_urls`` regex: ``file://<store>/<name>.mar`` and nothing else.

    TorchServe matches it against the whole URL with CASE_INSENSITIVE; ``(?-i)`` turns that off after
    the scheme, so a directory whose name differs only in case cannot match on a case-sensitive file system.
    """
    escaped = "".join(c if c.isalnum() else "\\" + c for c in property_path(store))
    return f"file://(?-i){escaped}/{MAR_NAME_PATTERN}"


def escape(value: str) -> str:
    """``value`` as a property value: backslashes doubled, so Java's loader reads them as written."""
    return value.replace("\\", "\\\\")
