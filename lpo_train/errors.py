"""User errors: a bad input (a config field, a path, a file), named with its fix.

``lpo-train`` prints a user error's message alone on stderr (exit status 2); ``lpo-train --debug COMMAND ...``
or ``LPO_TRAIN_DEBUG=1`` shows its traceback. A user error is

- a ``UserError`` (a ``ValueError``; raise it from your own reward or dataset code for the same treatment), or
- a ``ValueError``, ``TypeError`` or file error (missing, existing, a folder, no permission) raised by a
  ``raise`` statement in lpo_train itself: every config and input check raises these with a message written
  for the user.

Anything else keeps its traceback: an error from a library, or one Python raises inside lpo_train on its own
(a failed unpacking, a bad index) is a bug or an environment problem, and the traceback is what finds it.
"""

from __future__ import annotations

import linecache
import os
import tempfile
from pathlib import Path

CHECK_TYPES = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


class UserError(ValueError):
    """A bad input, with a message that names it and the fix."""


class UserPathError(UserError, OSError):
    """A path that cannot be used as given (an ``OSError`` too, for callers that catch file errors)."""


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, UserError):
        return True
    if not isinstance(error, CHECK_TYPES) or error.__traceback__ is None:
        return False
    tb = error.__traceback__
    while tb.tb_next is not None:  # the frame that raised it
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not str(Path(filename).resolve()).startswith(_PACKAGE):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")  # on purpose, not by accident


def check_writable(folder: str | Path, field: str, given: str | Path | None = None) -> None:
    """Fail at once when ``folder`` cannot be created or written, before any sampling or training does work that
    would be lost. ``field`` names the setting and ``given`` its value (default: ``folder``). Creates nothing:
    writes and removes one probe file in the nearest folder that exists."""
    what = f"{field} {folder if given is None else given}"
    target = Path(folder).expanduser()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserPathError(f"{what} cannot be written: {existing} is a file, not a folder. Choose another {field}.")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".lpo-train-write-check-"):
            pass
    except OSError as e:
        raise UserPathError(f"{what} cannot be written ({existing}: {e.strerror or e}). Choose another {field} "
                            "or make the folder writable.") from e
