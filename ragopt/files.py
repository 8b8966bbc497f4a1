"""Files that are never seen half-written: each is written under a temporary name in the same
folder, unique across processes and machines (mkstemp's exclusive create, not a PID that
containers share), and renamed into place in one step."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What a file created with open() would get; mkstemp's own 0600 would hide shared outputs."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh temporary file beside `path`, then rename it to `path`; on any
    error the temporary file is removed and `path` keeps its old content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(handle, FILE_MODE)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def safe_name(label: str) -> str:
    """A file name for a label (a domain, say): letters and digits of any script kept, every run
    of anything else one underscore."""
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in label).strip("._")
    return "_".join(part for part in name.split("_") if part) or "_"
