"""The generator's one error type (re-exported by :mod:`codegen.spec`)."""

from __future__ import annotations


class SpecError(ValueError):
    """A malformed spec; the message names the spec file and the offending symbol."""
