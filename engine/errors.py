"""duorank's exceptions: each names the offending value and what was expected."""

from __future__ import annotations


class DuorankError(Exception):
    """Base class of duorank's own errors."""


class IndexFormatError(DuorankError, ValueError):
    """A saved index is missing, truncated, corrupt or of an unknown format version."""
