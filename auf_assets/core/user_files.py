"""Reading a file a user names: a prompt file, a price table, a run config, a pool file.

The label inbox takes files from anyone who can write to a folder (`label_files`); these are
files a user points the tool at by name, on the command line, in a run config or in `AUF_*`.
The same rules hold, adapted to that:

- only a regular file is read. A symbolic link the user named is followed (a Hugging Face cache
  snapshot is a link to a blob), but what it points to must be a regular file: a fifo would block
  the read forever, a device (`/dev/zero`) never ends, a folder or a socket is no file. The open
  does not block (O_NONBLOCK) and checks that it opened the file that was looked at;
- a file read whole has a size limit, checked before it is read (and again while reading, for a
  file that grows): the message names the size and the limit;
- text is UTF-8 (`decode_utf8`); a file in another encoding is named with the byte offset of the
  first bad byte;
- no message quotes the file. Names of columns are shown only where they look like column names
  (`describe_names`): the "header" of a file that is not a table is its first line.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from auf_assets.core.label_files import non_regular_kind

__all__ = [
    "UserFileError",
    "check_regular_file",
    "decode_utf8",
    "describe_names",
    "read_limited",
    "yaml_problem",
]


class UserFileError(ValueError):
    """A named file that is not read: `problem` says why (without the path, for callers that
    put the file into their own wording); the message is ``{path}: {problem}``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def _too_large(size: int, max_bytes: int) -> str:
    return f"the file is {megabytes(size)}, above the limit of {megabytes(max_bytes)} for it"


def check_regular_file(path: str | Path, *, max_bytes: int | None = None) -> os.stat_result:
    """The `os.stat` of `path` when it is a regular file of at most `max_bytes` (after links)."""
    p = Path(path)
    try:
        entry = os.stat(p)
    except FileNotFoundError:
        link = " (a symbolic link to nothing)" if p.is_symlink() else ""
        raise UserFileError(p, f"file not found{link}") from None
    except OSError as exc:
        raise UserFileError(p, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    kind = non_regular_kind(entry)
    if kind is not None:
        raise UserFileError(p, f"it is {kind}, not a regular file; name a file")
    if max_bytes is not None and entry.st_size > max_bytes:
        raise UserFileError(p, _too_large(entry.st_size, max_bytes))
    return entry


def read_limited(path: str | Path, *, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see the module docstring)."""
    p = Path(path)
    entry = check_regular_file(p, max_bytes=max_bytes)
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_CLOEXEC"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise UserFileError(p, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            entry.st_dev,
            entry.st_ino,
        ):
            raise UserFileError(p, "it was replaced while it was being opened; try again")
        data = handle.read(max_bytes + 1)  # one more: a file that grew past the limit
    if len(data) > max_bytes:
        raise UserFileError(p, _too_large(len(data), max_bytes) + " (it grew while read)")
    return data


def decode_utf8(data: bytes, path: str | Path) -> str:
    """`data` as UTF-8 text (a byte-order mark is dropped), or a message naming the file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserFileError(
            path, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None


# A column name as people write them: letters, digits and a little punctuation, not too long.
_NAME = re.compile(r"[^\W\d][\w .\-/()\[\]]{0,63}")


def describe_names(names: Sequence[str], shown: int = 20) -> str:
    """The column names for a message, e.g. ``'a', 'b'``, or a count where they do not look
    like names (a file that is not a table has its first line as its "header")."""
    if not names:
        return "none"
    if not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names):
        return f"{len(names)} column(s) whose names do not look like column names (not shown)"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def yaml_problem(exc: Exception) -> str:
    """A PyYAML error's problem and place, without the line of the file its message quotes."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
