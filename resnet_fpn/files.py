"""Atomic file writes: the one place where the project writes a file that someone may read while it is written.

Every file a run produces (checkpoints, metrics.json, history.json, generated data, pictures) is written to a
temporary file in the same folder and renamed over the target, so a killed process never leaves a torn file and
two processes writing the same file (DDP ranks generating the same synthetic set) each replace it whole.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'ed and renamed to `path`.

    Args:
        path: the final file; its folder is created when missing.

    Yields:
        A path in the same folder (same file system, so ``os.replace`` is atomic on POSIX). On an exception the
        temporary file is removed and `path` is left as it was.

    Raises:
        IsADirectoryError: `path` is a folder.
        NotADirectoryError: a part of `path`'s folder is a file.
        OSError: the folder cannot be created or written (``PermissionError``, a read-only or virtual file
            system such as /proc); the message names `path` and the reason. All before anything is written.

    Example:
        >>> with atomic_path("out/picture.png") as tmp:
        ...     image.save(tmp, format="PNG")
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unwritable(path: Path, exc: OSError) -> OSError:
    """The error for a `path` whose folder cannot be created or written, naming `path` and the reason."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    reason = exc.strerror or str(exc)
    if not path.parent.is_dir():
        return type(exc)(f"cannot write {path}: cannot create the folder {path.parent} ({reason})")
    return type(exc)(f"cannot write {path}: cannot create a file in {path.parent} ({reason})")


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, *, indent: Union[int, None] = 2) -> Path:
    """Write `obj` as JSON to `path` atomically (compact separators when ``indent`` is None)."""
    separators = (",", ":") if indent is None else None
    return atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators))


def atomic_torch_save(obj: object, path: PathLike) -> Path:
    """``torch.save`` to `path` atomically: a killed write leaves no torn checkpoint."""
    import torch  # keep this module importable without torch for data-only tools

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
