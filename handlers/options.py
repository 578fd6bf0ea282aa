"""Handler options (the ``handler:`` section of ``model-config.yaml``) and the request limits they imply."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

#: A JSON number in a tensor body takes at most about this many characters ("0.12345678901234567,").
JSON_CHARS_PER_NUMBER = 24
#: Room for everything in a body besides its images or numbers (field names, ids, parameters).
BODY_OVERHEAD = 64 << 10


@dataclass
class Options:
    """What a deployment may tune; the limits default to sizes derived from the model's input shape."""

    half: bool = False            # float16 autocast on CUDA (ignored, with a warning, on CPU)
    compile: bool = False         # torch.compile the task methods; warm-up then compiles at load
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    warmup: bool = True           # run every task once at load so the first request is not slow
    max_n: int = 64               # most images one sample request may ask for
    max_items: int = 32           # most images or latents one KServe request may carry
    max_image_side: int = 4096    # header dimensions above this are refused before decoding (413)
    max_image_pixels: int = 16_777_216
    max_abs_latent: float = 1e4   # latent values must be finite and at most this in magnitude
    max_image_bytes: int | None = None  # default: 32 KiB + 4 bytes per input value
    max_body_bytes: int | None = None   # default: max_items of the largest item, plus 64 KiB

    @classmethod
    def from_yaml(cls, section: dict[str, Any] | None) -> "Options":
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"model-config.yaml handler: unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        options = cls(**section)
        for f in fields(cls):
            value = getattr(options, f.name)
            if f.name.startswith("max_") and f.name != "max_abs_latent" and value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"model-config.yaml handler: {f.name} must be a positive integer, got {value!r}")
        return options

    def image_bytes(self, input_shape: tuple[int, int, int]) -> int:
        """The most bytes one encoded image may have: room for any real PNG/JPEG of the model's size."""
        if self.max_image_bytes is not None:
            return self.max_image_bytes
        channels, height, width = input_shape
        return (32 << 10) + 4 * channels * height * width

    def body_bytes(self, input_shape: tuple[int, int, int], latent_dim: int | None) -> int:
        """The most bytes one request body may have: ``max_items`` of the largest form an item can take."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        channels, height, width = input_shape
        per_item = max(
            self.image_bytes(input_shape) * 4 // 3 + 64,            # base64 PNG/JPEG
            JSON_CHARS_PER_NUMBER * channels * height * width,      # a pixel or tensor list
            JSON_CHARS_PER_NUMBER * (latent_dim or 0),              # a latent
        )
        return self.max_items * per_item + BODY_OVERHEAD
