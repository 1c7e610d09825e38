"""What every data reader checks the same way: UTF-8 decoding (errors with file:line:column) and a field size bound.

Readers decode in text mode and, only when decoding fails, re-scan the file in binary to find the first bad byte:
the fast path costs nothing, and the error names the file, the line and the column a user has to fix.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError

# The longest field in the staged data is ~1,400 characters (an RTE premise); E2E, WebNLG and DART stay under 400.
# 20,000 is far above any real sentence and far below what a missing line break or a stray delimiter produces (a
# run of rows glued into one field), so a longer field is refused, not truncated: truncation would train on a
# corrupted row without anyone noticing.
MAX_FIELD_CHARS = 20_000


def utf8_problem(path: Path) -> str | None:
    """`"<file>:<line>: not valid UTF-8 (...)"` for the first undecodable byte of `path`, or None if it decodes."""
    with Path(path).open("rb") as handle:
        # a newline byte never occurs inside a multi-byte UTF-8 sequence, so decoding line by line is exact
        for line_no, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                column = len(line[: err.start].decode("utf-8")) + 1  # characters before the bad byte, all valid
                return (
                    f"{path}:{line_no}: not valid UTF-8 (byte 0x{line[err.start]:02x} at column {column}); "
                    f"re-save the file as UTF-8"
                )
    return None


def require_utf8(path: Path) -> None:
    """DataError naming file:line:column unless the whole file decodes as UTF-8 (a binary scan, no parsing)."""
    problem = utf8_problem(path)
    if problem is not None:
        raise DataError(problem)


def decode_error(path: Path, err: UnicodeDecodeError) -> DataError:
    """The DataError to raise when reading `path` in text mode failed with `err`: it locates the bad byte."""
    return DataError(utf8_problem(path) or f"{path}: not valid UTF-8 ({err}); re-save the file as UTF-8")


def check_field_size(where: str, name: str, value: str) -> None:
    """DataError naming `where` (file:line) and the bound if `value` is longer than MAX_FIELD_CHARS."""
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(
            f"{where}: field {name!r} has {len(value):,} characters, over the bound of {MAX_FIELD_CHARS:,} "
            f"(ftlab.data.textfile.MAX_FIELD_CHARS); a missing line break or a stray delimiter glues rows together: "
            f"fix the file"
        )
