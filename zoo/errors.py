"""Exception types raised by ae-zoo. Every error a user can trigger derives from ZooError."""


class ZooError(Exception):
    """Base class for all ae-zoo errors."""


class ConfigError(ZooError, ValueError):
    """A model config value is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field {field!r}: {message}")


class UnknownNameError(ZooError, KeyError):
    """An architecture or model name is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class CheckpointError(ZooError):
    """A checkpoint file is missing, unsafe, corrupt or does not match its config."""


class PluginError(ZooError):
    """A plugin failed to import, raised in a hook or registered something invalid."""


class UnsupportedTaskError(ZooError):
    """A model was asked for a task it does not declare."""


class DataError(ZooError):
    """A dataset is unknown, missing, corrupt (sha256 mismatch) or could not be acquired."""
