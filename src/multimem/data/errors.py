"""Errors a user can fix by changing params.yaml or the corpus (UserError: printed, exit 2)."""

from multimem.params import UserError


class DataError(UserError, ValueError):
    """A data parameter or corpus cannot produce the requested stage outputs."""


class LeakageError(DataError):
    """The same document (normalised text) appears in more than one split."""
