"""The one exception type for user mistakes: the scripts report it in one line and exit with code 2."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake on the user's side (bad input, missing weights) reported in one line."""
