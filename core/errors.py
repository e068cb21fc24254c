"""The errors every layer raises. They live apart from the CLI so that pure code (math, data,
models) never imports `core.cli`; the CLI and the app turn them into one line for the user."""
from __future__ import annotations


class UserError(RuntimeError):
    """A problem the user can fix (missing model, bad path, bad value): printed, exit code 2."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


class BadImage(ValueError):
    """The file cannot be used as an image; str(e) is the reason shown to the user."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


class WorkspaceBusy(UserError):
    """Another process writes to the workspace; the message names its pid and command."""
