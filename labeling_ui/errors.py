"""Errors of the labeling tool: every message says what was refused and why, in words a user can act on."""

from __future__ import annotations


class LabelError(ValueError):
    """A labeling request that cannot be done as asked (bad input, unknown name, conflict)."""


class UnknownProject(LabelError):
    """No project of that name in the database."""


class NotAllowed(LabelError):
    """The logged-in user may not do this (wrong password, another annotator's label, admin only)."""
