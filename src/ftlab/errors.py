"""Errors a user can act on: each message names the problem and the fix."""


class FtlabError(Exception):
    """Base class for configuration, data and training errors that ftlab reports to the user."""


class ConfigError(FtlabError):
    """A config value is missing, unknown or out of range."""


class DataError(FtlabError):
    """A data folder, file or row is missing or malformed."""


class BackboneError(FtlabError):
    """A backbone cannot be loaded, or its layer names do not match the model."""


class NonFiniteLossError(FtlabError):
    """The training loss became NaN or inf."""


def require(condition: bool, message: str, error: type[FtlabError] = ConfigError) -> None:
    """Raise `error(message)` unless `condition` holds."""
    if not condition:
        raise error(message)
