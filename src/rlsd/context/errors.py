"""The named errors of `rlsd.context`: each is a `UserError` (the `rlsd` command prints its
message alone and exits with status 2), and each message names the file, folder or row."""

from __future__ import annotations

from rlsd.data import UserError


class ContextError(UserError):
    """Privileged context cannot be built from what the user gave."""


class DocumentError(ContextError):
    """The documents folder is missing or empty, or a document cannot be read."""


class EncryptedPDFError(DocumentError):
    """A PDF is password-protected: rlsd does not guess passwords; decrypt it first."""


class DatabaseError(ContextError):
    """The database is not a SQLite file, or cannot be opened read-only."""


class ContextBudgetError(ContextError):
    """A row's own reference alone is over the token budget (the reference is never cut)."""
