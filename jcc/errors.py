"""Errors that are the user's to fix: the command line prints them in one line.

Each message names the bad thing and the fix; none should surface as a shape
error from deep inside JAX.
"""


class UserError(Exception):
  """A mistake in the config, the data or the workdir."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


class DataError(UserError, ValueError):
  """A dataset that is missing, unreadable or inconsistent with the config."""


class CheckpointError(UserError):
  """A workdir whose checkpoints are missing, damaged or of another model."""
