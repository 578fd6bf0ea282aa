"""The task code every wire protocol shares: what one model accepts, and turning values into task inputs.

A protocol decides where the task and the values sit in its body; the checks
of the values themselves (images, pixel arrays, latents, counts and seeds) are
written here once, against the *kinds* a task declares (:class:`zoo.tasks.Task`),
never against an architecture's name.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo_handlers.errors import RequestError, short
from zoo_handlers.images import decode_image
from zoo_handlers.options import Options

MAX_SEED = 2**63 - 1


@dataclass
class Job:
    """One unit of work: a task and its input (a (C, H, W) image, a latent vector or a count)."""

    task: str
    value: Any
    seed: int | None = None


@dataclass
class ModelSpec:
    """What a served model accepts: its tasks and their kinds, input shape, latent size and limits."""

    name: str
    version: str
    tasks: tuple[str, ...]
    kinds: dict[str, Any]
    input_shape: tuple[int, int, int]
    latent_dim: int | None
    options: Options = field(default_factory=Options)
    #: Calibrated thresholds of scalar tasks (``anomaly.json``): a reply of such a task adds the verdict.
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def image_bytes(self) -> int:
        return self.options.image_bytes(self.input_shape)

    @property
    def body_bytes(self) -> int:
        return self.options.body_bytes(self.input_shape, self.latent_dim)

    def input_kind(self, task: str) -> str:
        return self.kinds[task].input

    def output_kind(self, task: str) -> str:
        return self.kinds[task].output

    def threshold(self, task: str) -> float | None:
        """The calibrated threshold of ``task``, or None when its replies carry no verdict."""
        return self.thresholds.get(task)

    @staticmethod
    def anomalous(score: float, threshold: float) -> bool:
        """The verdict: anomalous when the score is above the threshold or is not a finite number."""
        return not (math.isfinite(score) and score <= threshold)

    # Tasks ------------------------------------------------------------------------------------

    def task(self, value: Any = None) -> str:
        """A declared task named by the client, or the default task when ``value`` is None."""
        from zoo.tasks import TASKS

        if value is None:
            return self.tasks[0]
        if not isinstance(value, str):
            raise RequestError(f"\"task\" must be a string naming one of: {', '.join(self.tasks)}")
        if value not in self.tasks:
            known = "unknown task" if value not in TASKS else "this model does not support task"
            raise RequestError(f"{known} {short(value)}; model {self.name!r} supports: {', '.join(self.tasks)}")
        return value

    def image_task(self, value: Any = None) -> str:
        """Like :meth:`task`, for a body that carries an image: the task must take one."""
        task = self.task(value)
        if self.input_kind(task) != "image":
            hint = "" if value is not None else f" (the default task; tasks: {', '.join(self.tasks)})"
            raise RequestError(f"task {task!r}{hint} does not take an image")
        return task

    # Values -----------------------------------------------------------------------------------

    def image(self, raw: bytes) -> torch.Tensor:
        """PNG/JPEG bytes -> (C, H, W), within this model's limits."""
        o = self.options
        return decode_image(raw, self.input_shape, max_bytes=self.image_bytes, max_side=o.max_image_side,
                            max_pixels=o.max_image_pixels)

    def image_base64(self, value: Any, what: str = '"image"') -> torch.Tensor:
        """A base64 PNG/JPEG string (line breaks and spaces allowed, as the ``base64`` tool writes) -> (C, H, W)."""
        if not isinstance(value, str):
            raise RequestError(f"{what} must be a base64-encoded PNG or JPEG string, got {type(value).__name__}")
        if len(value) > self.image_bytes * 4 // 3 + 4 + len(value) // 60 * 2:
            raise RequestError(f"{what} is longer than this model's image limit of {self.image_bytes} bytes", 413)
        compact = "".join(value.split())
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{what} is not valid base64") from None
        if not raw:
            raise RequestError(f"{what} is empty")
        return self.image(raw)

    def pixels(self, value: Any, what: str = "the pixel array") -> torch.Tensor:
        """Nested lists of numbers in [0, 1], shaped (C, H, W), (H, W) for one channel, or flat -> (C, H, W)."""
        c, h, w = self.input_shape
        flat, shape = flatten(value, what)
        if tuple(shape) not in _image_shapes(self.input_shape):
            raise RequestError(f"{what} has shape {list(shape)}; this model takes {[c, h, w]}"
                               + (f", {[h, w]}" if c == 1 else "") + f" or {[c * h * w]} values in [0, 1]")
        return self.unit_values(flat, what).view(c, h, w)

    def unit_values(self, flat: list, what: str) -> torch.Tensor:
        """Numbers that must be finite and in [0, 1] -> float32 tensor."""
        tensor = numbers(flat, what)
        bad = ~((tensor >= 0) & (tensor <= 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise RequestError(f"{what}[{i}] = {short(flat[i])} is outside [0, 1]")
        return tensor

    def latent(self, value: Any, what: str = '"latent"') -> torch.Tensor:
        """A list of ``latent_dim`` finite numbers -> (D,)."""
        if self.latent_dim is None:
            raise RequestError(f"model {self.name!r} has no latent space")
        if not isinstance(value, list):
            raise RequestError(f"{what} must be a list of {self.latent_dim} numbers, got {type(value).__name__}")
        if len(value) != self.latent_dim:
            raise RequestError(f"{what} must have length {self.latent_dim} (the model's latent_dim), got {len(value)}")
        return self.latent_values(value, what)

    def latent_values(self, flat: list, what: str) -> torch.Tensor:
        """Finite numbers of magnitude at most ``max_abs_latent`` -> float32 tensor."""
        tensor = numbers(flat, what)
        limit = self.options.max_abs_latent
        if not torch.isfinite(tensor).all() or (tensor.abs() > limit).any():
            i = int((~torch.isfinite(tensor) | (tensor.abs() > limit)).nonzero()[0])
            v = flat[i]
            if isinstance(v, float) and not math.isfinite(v):
                raise RequestError(f"{what}[{i}] is {v}: NaN and infinite values are not allowed")
            raise RequestError(f"{what}[{i}] = {short(v)} is out of range (|value| <= {limit:g})")
        return tensor

    def count(self, value: Any, what: str = '"n"') -> int:
        """A sample count from 1 to ``max_n``: 400 if it is not one, 413 if it is too large."""
        if not is_int(value) or value < 1:
            raise RequestError(f"{what} must be an integer from 1 to {self.options.max_n}, got {short(value)}")
        if value > self.options.max_n:
            raise RequestError(f"{what} = {short(value)} is more than this model's limit of {self.options.max_n}", 413)
        return value

    @staticmethod
    def seed(value: Any, what: str = '"seed"') -> int | None:
        if value is not None and (not is_int(value) or not 0 <= value <= MAX_SEED):
            raise RequestError(f"{what} must be an integer from 0 to 2**63-1, got {short(value)}")
        return value


def flatten(value: Any, what: str) -> tuple[list, list[int]]:
    """Nested lists -> (flat list, shape); ragged nesting is an error."""
    shape: list[int] = []
    level = value
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    if not shape:
        raise RequestError(f"{what} must be a (nested) list of numbers, got {type(value).__name__}")
    flat = value
    for depth in range(1, len(shape)):
        merged = []
        for item in flat:
            if not isinstance(item, list) or len(item) != shape[depth]:
                raise RequestError(f"{what} is ragged: every list at depth {depth} must have {shape[depth]} items")
            merged.extend(item)
        flat = merged
    return flat, shape


def numbers(flat: list, what: str) -> torch.Tensor:
    """A flat list of JSON numbers (not booleans, strings or nulls) -> float32 tensor."""
    for i, v in enumerate(flat):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RequestError(f"{what}[{i}] must be a number, got {short(v)}")
    try:
        return torch.tensor(flat, dtype=torch.float64).float()
    except (OverflowError, RuntimeError, TypeError):
        raise RequestError(f"{what} holds a number too large to represent") from None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_shapes(input_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    c, h, w = input_shape
    return [(c, h, w), (c * h * w,)] + ([(h, w)] if c == 1 else [])
