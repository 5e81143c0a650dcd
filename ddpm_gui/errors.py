"""User-facing errors.

Everything a person can cause (a bad argument, a missing file, an offline network) raises a
`DDPMError` whose message is one readable sentence that says what to do. The CLI prints it as one
line and exits non-zero; the GUI shows it in a dialog. Anything else is a bug and keeps its traceback.
"""


class DDPMError(Exception):
    """An error whose message is meant for the user."""


class ConfigError(DDPMError, ValueError):
    """A setting is out of range or inconsistent."""


class DataError(DDPMError):
    """A dataset cannot be found, reached, or decoded."""


class CheckpointError(DDPMError):
    """A checkpoint or run folder cannot be read, or does not fit the model."""
