"""A small HTTP client for a server started with ``zoo serve``: it finds the URL and the token itself."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.serving.package import ServingError
from zoo.serving.server import ServerState, run_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def post(url: str, body: bytes, content_type: str | None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> Reply:
    """POST ``body`` (with no Content-Type if it is None); the status and decoded JSON (or ``{"raw": text}``)."""
    type_header = {"Content-Type": content_type} if content_type is not None else {}
    request = urllib.request.Request(url, data=body, method="POST", headers={**type_header, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        data = {"raw": payload.decode("utf-8", "replace")}
    return Reply(status, data if isinstance(data, dict) else {"value": data})


def read_source(text: str) -> bytes:
    """Inline JSON (text whose first non-space character is ``{``) as bytes, else the file ``text`` names.

    JSON is decided first: a long JSON string is not a valid file name, and trying it as one fails.
    """
    if text.lstrip().startswith("{"):
        return text.encode()
    try:
        return Path(text).read_bytes()
    except OSError as exc:
        raise ServingError(f"{text}: not a readable file ({exc.strerror}), and not a JSON object") from None


def request_body(source: str | bytes | dict, task: str | None = None) -> tuple[bytes, str]:
    """(body, content type) for an image file/bytes, a JSON file/string or a dict, optionally forcing ``task``."""
    if isinstance(source, dict):
        data = dict(source)
    else:
        raw = source if isinstance(source, bytes) else read_source(str(source))
        if raw.startswith(PNG_MAGIC) or raw.startswith(JPEG_MAGIC):
            if task is None:
                return raw, "image/png" if raw.startswith(PNG_MAGIC) else "image/jpeg"
            data = {"image": base64.b64encode(raw).decode("ascii")}
        else:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ServingError(f"input is neither a PNG/JPEG image nor JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ServingError("a JSON input must be an object")
    if task is not None:
        data["task"] = task
    return json.dumps(data).encode(), "application/json"


def predict(model: str, source: str | bytes | dict, task: str | None = None, directory: str | Path | None = None,
            timeout: float = 60) -> Reply:
    """Send one request to the model ``model`` of the server started from ``directory``."""
    state = ServerState.read(run_dir(directory))
    if state is None or not state.alive():
        raise ServingError(f"no server is running from {run_dir(directory)}; start one with `zoo serve {model}`")
    if model not in state.models:
        raise ServingError(f"the running server does not serve {model!r}; it serves: {', '.join(state.models)}")
    body, content_type = request_body(source, task)
    return post(state.predict_url(model), body, content_type, state.headers("inference"), timeout=timeout)


def save_outputs(reply: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the images of a reply as PNG files (``out``, or ``out`` with ``-<i>`` for several), else JSON."""
    out = Path(out)
    images = [reply["image"]] if "image" in reply else list(reply.get("images", []))
    if not images:
        out.write_text(json.dumps(reply, indent=2) + "\n")
        return [out]
    if len(images) == 1:
        out.write_bytes(base64.b64decode(images[0]))
        return [out]
    paths = []
    for i, data in enumerate(images):
        path = out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}")
        path.write_bytes(base64.b64decode(data))
        paths.append(path)
    return paths


def ascii_art(images: list[str], width: int = 28) -> list[str]:
    """Base64 PNGs drawn with characters, darkest to brightest, for a terminal."""
    import io

    from PIL import Image

    ramp = " .:-=+*#%@"
    drawings = []
    for data in images:
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
        w, h = image.size
        cols = min(width, w)
        rows = max(1, round(h * cols / w / 2))  # characters are about twice as tall as wide
        image = image.resize((cols, rows))
        pixels = list(image.tobytes())
        lines = ["".join(ramp[p * (len(ramp) - 1) // 255] * 2 for p in pixels[r * cols:(r + 1) * cols])
                 for r in range(rows)]
        drawings.append("\n".join(lines))
    return drawings
