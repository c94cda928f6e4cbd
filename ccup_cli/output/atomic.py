"""Atomic file and folder writes, and streaming hashes.

Every output is written to a temporary sibling and moved into place with ``os.replace``,
so an interrupted or failed run leaves the previous state untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so big checkpoints never sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def os_error_to_output_error(err: OSError, target: Path) -> OutputError:
    if err.errno == errno.ENOSPC:
        return OutputError(f"no space left to write {target}", "free some disk space or choose another --out")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"no permission to write {target}", "choose an --out folder you can write to")
    return OutputError(f"cannot write {target}: {err.strerror or err}", "check the --out path")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success."""
    target = Path(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise os_error_to_output_error(err, target) from err
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        raise os_error_to_output_error(err, target) from err
    finally:  # KeyboardInterrupt and every other failure land here too
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; it becomes ``target`` only on success.

    With ``overwrite`` an existing ``target`` is replaced, and only after the new folder is
    complete. On any failure (Ctrl-C included) the temporary folder is removed and an
    existing ``target`` stays as it was.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise OutputError(f"output folder {target} already exists", "pass --overwrite or choose another --out")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as err:
        raise os_error_to_output_error(err, target) from err
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise os_error_to_output_error(err, target) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
