"""The errors a user can cause, at the bottom of the toolkit: standard library only.

Every command catches `UserError` and prints it as one line naming the input and what is allowed,
with exit code 2 (`pipelines.harness.stage.stage_main`). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (a flag, a recipe, a file, a repo): one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A bad recipe or argument value; the message names the field and what is allowed."""


class StoreError(UserError):
    """A repository, revision or tag that does not exist or cannot be written."""


class LexiconError(ConfigError):
    """A language or word the lexicons do not have."""


class DataError(UserError):
    """An input artifact whose content is not what the stage needs (a column, a config, an image)."""
