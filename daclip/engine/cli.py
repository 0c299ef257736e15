"""Command-line helpers for the scripts: one-line user errors with exit code 2, bounded progress bars,
argparse types."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

from daclip.engine.config import ConfigError
from daclip.engine.errors import UserError

__all__ = ["USER_ERRORS", "run_main", "progress_bar", "int_at_least"]


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError, NotADirectoryError]
    try:  # data does not depend on daclip, but scripts use both
        from data.io import ImageReadError

        types.append(ImageReadError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


USER_ERRORS = _user_error_types()


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open (a training loop stopped by a user error)."""
    module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(module, "tqdm", None), "_instances", None) or ()):
        with contextlib.suppress(Exception):
            bar.close()


def run_main(
    main_fn: Callable[..., int | None], *args: Any, extra_errors: tuple[type[BaseException], ...] = ()
) -> int:
    """Run ``main_fn(*args)``; a user mistake ends with one line on stderr and exit code 2.

    ``ValueError`` counts as a user mistake too (datasets and loaders raise it for
    bad files and keys), but a ``KeyboardInterrupt`` or a genuine bug still shows
    its traceback.
    """
    try:
        code = main_fn(*args)
    except USER_ERRORS + (ValueError,) + extra_errors as err:
        _close_progress_bars()  # a bar the error left open would share the error's line
        from data.io import original_error_message  # the message of an error from a DataLoader worker

        text = original_error_message(str(err)).strip()
        message = text.splitlines()[0] if text else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return int(code or 0)


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar whose refresh rate is bounded: every 0.5 s on a terminal, every 30 s otherwise.

    Logs redirected to a file (CI, nohup, clusters) then grow by a line per 30 s, not per step.
    Call ``set_postfix(..., refresh=False)`` on it so a postfix update does not force a redraw.
    """
    from tqdm import tqdm  # lazily: the library must import without tqdm

    stream = kwargs.pop("file", sys.stderr)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    kwargs.setdefault("mininterval", 0.5 if tty else 30.0)
    kwargs.setdefault("dynamic_ncols", tty)
    return tqdm(iterable, file=stream, **kwargs)


def float_at_least(low: float) -> Callable[[str], float]:
    """An argparse type for the scripts: a finite number >= ``low`` (anything else is argparse's usage error)."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low:g}, got {text}")
        return value

    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for the scripts: an integer >= ``low`` (anything else is argparse's usage error)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse
