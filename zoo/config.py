"""Model configs: serialisable dataclasses validated on construction.

An architecture declares a dataclass subclass of :class:`ModelConfig` whose
fields all have defaults and JSON-friendly types. ``validate`` runs in
``__post_init__``; a bad value raises :class:`zoo.errors.ConfigError` naming
the field.
"""

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any, Self

from zoo.errors import ConfigError


@dataclasses.dataclass
class ModelConfig:
    """Base class for architecture configs."""

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def validate(self) -> None:
        """Check field values; subclasses raise ConfigError via the ``require_*`` helpers."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict such as ``to_dict`` returns; unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(key, f"unknown field for {cls.__name__}; valid fields: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        values = {k: tuple(v) if _is_tuple_type(hints[k]) and isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed."""
        return self.from_dict({**self.to_dict(), **changes})

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            if _is_tuple_type(expected):
                if isinstance(value, list):
                    value = tuple(value)
                    setattr(self, f.name, value)
                if not isinstance(value, tuple) or not all(_is_int(v) for v in value):
                    raise ConfigError(f.name, f"expected a sequence of integers, got {value!r}")
            elif expected is int and not _is_int(value):
                raise ConfigError(f.name, f"expected an integer, got {value!r}")
            elif expected is float:
                if not (_is_int(value) or isinstance(value, float)):
                    raise ConfigError(f.name, f"expected a number, got {value!r}")
                setattr(self, f.name, float(value))
            elif expected is str and not isinstance(value, str):
                raise ConfigError(f.name, f"expected a string, got {value!r}")
            elif expected is bool and not isinstance(value, bool):
                raise ConfigError(f.name, f"expected true or false, got {value!r}")

    # Validation helpers -----------------------------------------------------

    def require(self, condition: bool, field: str, message: str) -> None:
        """Raise ConfigError for ``field`` unless ``condition`` holds."""
        if not condition:
            raise ConfigError(field, f"{message}, got {getattr(self, field)!r}")

    def require_positive(self, *fields: str) -> None:
        """Every named field (a number or a sequence of numbers) must be > 0."""
        for name in fields:
            value = getattr(self, name)
            items = value if isinstance(value, tuple) else (value,)
            self.require(all(v > 0 for v in items), name, "must be positive")

    def require_range(self, field: str, low: float, high: float, *, high_inclusive: bool = True) -> None:
        """``low <= value <= high`` (or ``< high``)."""
        value = getattr(self, field)
        ok = low <= value <= high if high_inclusive else low <= value < high
        self.require(ok, field, f"must be in [{low}, {high}{']' if high_inclusive else ')'}")

    def require_choice(self, field: str, choices: Iterable[str]) -> None:
        """The value must be one of ``choices``."""
        choices = sorted(choices)
        self.require(getattr(self, field) in choices, field, f"must be one of {', '.join(choices)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_tuple_type(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
