"""Errors that mean "the input was wrong": the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user; the message says what was wrong and what to do."""


class UnknownModelError(UserError, ValueError):
    """A model name that neither this package nor RecBole defines."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset folder that is not on disk (RecBole would try to download it)."""


class ConfigError(UserError, ValueError):
    """A config value that cannot be used."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing or does not fit the model."""


class TrainingDiverged(UserError, ValueError):
    """The training loss became NaN or infinite."""
