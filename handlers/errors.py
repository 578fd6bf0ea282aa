"""The client error every wire protocol reports, and how much of a client's input a message may echo."""

from __future__ import annotations

import re
from typing import Any

#: Longest message sent back. TorchServe closes error replies with SO_LINGER=0, so a large body
#: reaches the client as a connection reset instead of an answer.
MAX_MESSAGE = 300
#: Longest piece of a client's own input repeated inside a message.
MAX_ECHO = 60

PHRASES = {400: "Bad Request", 404: "Not Found", 406: "Not Acceptable", 413: "Payload Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error"}
_REPR = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")


class RequestError(Exception):
    """A client error: it becomes its request's own 4xx reply while the rest of the batch proceeds."""

    def __init__(self, message: str, code: int = 400):
        message = clean(message)
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def phrase(self) -> str:
        return PHRASES.get(self.code, "Bad Request")


def clean(text: str) -> str:
    """``text`` without object reprs (``<... at 0x...>``), cut to :data:`MAX_MESSAGE` characters."""
    text = _REPR.sub("the input", str(text))
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def short(value: Any) -> str:
    """A client value as it may appear in a message: its repr, cut to :data:`MAX_ECHO` characters."""
    text = repr(value) if not isinstance(value, (dict, list, tuple, set)) else _container(value)
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO - 3] + "..."


def names(values, limit: int = 5) -> str:
    """At most ``limit`` client-supplied names, each shortened, then how many more there were."""
    values = list(values)
    shown = ", ".join(short(v) for v in values[:limit])
    return shown if len(values) <= limit else f"{shown} and {len(values) - limit} more"


def _container(value) -> str:
    # Never build the repr of a huge container just to cut it.
    return f"a {type(value).__name__} of {len(value)} item(s)"
