"""Reading user files with clear errors, and writing outputs all-or-nothing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from newsletter.errors import ContentError, NewsletterError


def read_text(path: Path, error: type[NewsletterError] = ContentError) -> str:
    """Read a UTF-8 text file; any failure is one line naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x})") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write every file or none: each goes to a temporary file first, then all are renamed.

    A failure before the renames leaves no partial output behind.
    """
    for path in files:
        if path.is_dir():  # os.replace would fail after the other files are in place
            raise NewsletterError(f"{path}: cannot write: is a folder")
    staged: list[tuple[str, Path]] = []
    mask = _umask()
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~mask)
    except OSError as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise NewsletterError(f"{exc.filename or path}: cannot write: {exc.strerror}") from None
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise NewsletterError(f"{path}: cannot write: {exc.strerror}") from None
