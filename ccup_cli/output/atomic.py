"""Atomic file and folder writes that never replace what they did not find, and streaming hashes.

Every output is written to a temporary sibling and moved into place in one rename, so an
interrupted or failed run leaves the previous state untouched. Without ``overwrite`` that
rename never replaces anything (``no_replace_rename``): when another run committed the same
target meanwhile, this run keeps nothing and says so (``OutputError``). With ``overwrite`` the
last writer wins, and ``CommitReceipt.replaced`` says what each run replaced.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputError

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # linux/fs.h
_RENAME_EXCL = 0x4  # macOS sys/stdio.h, for renamex_np
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EINVAL),
                getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


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


# --- a rename that never replaces ----------------------------------------------------------------


@functools.cache
def _libc_rename_noreplace():
    """``f(src: bytes, dst: bytes) -> (ok, errno)`` from the C library where the platform has a
    no-replace rename (Linux ``renameat2``, macOS ``renamex_np``), else None."""
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        return None
    import ctypes  # lazy: start-up time (the door imports this module)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform == "darwin":
            fn = libc.renamex_np
            fn.argtypes, fn.restype = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint], ctypes.c_int
            call = lambda src, dst: fn(src, dst, _RENAME_EXCL)  # noqa: E731
        else:
            fn = libc.renameat2  # glibc >= 2.28, musl >= 1.2.? (else AttributeError)
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            call = lambda src, dst: fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE)  # noqa: E731
    except (OSError, AttributeError):
        return None

    def rename(src: bytes, dst: bytes) -> tuple[bool, int]:
        ok = call(src, dst) == 0
        return ok, 0 if ok else ctypes.get_errno()

    return rename


def no_replace_rename(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists: True when renamed, False when ``dst`` was there.

    Atomic where the C library and the file system have a no-replace rename (Linux
    ``renameat2(RENAME_NOREPLACE)``, macOS ``renamex_np(RENAME_EXCL)``). Elsewhere, a file is
    linked (``os.link`` fails on an existing name) and a folder renamed after an existence check:
    POSIX ``rename`` never replaces a non-empty folder and Windows never replaces anything, so the
    only gap left is an empty folder created in the instant between check and rename.
    """
    src, dst = Path(src), Path(dst)
    native = _libc_rename_noreplace()
    if native is not None:
        ok, code = native(os.fsencode(src), os.fsencode(dst))
        if ok:
            return True
        if code == errno.EEXIST:
            return False
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(dst))
    if not src.is_dir():
        try:
            os.link(src, dst)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: check, then rename
            pass
        else:
            os.unlink(src)
            return True
    if os.path.lexists(dst):
        return False
    try:
        os.rename(src, dst)
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    return True


# --- files -------------------------------------------------------------------------------------


def _raced(target: Path, what: str) -> OutputError:
    return OutputError(f"{what} {target} was written by another run while this one worked; this run kept nothing",
                       "pass --overwrite to let the last run win, or give each run its own --out")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True, what: str = "output file") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success.

    ``overwrite`` False: the move never replaces a ``target`` (one that appeared while the file
    was written raises ``OutputError`` naming it, and this file is dropped).
    """
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
        if overwrite:
            os.replace(tmp, target)
        elif not no_replace_rename(tmp, target):
            raise _raced(target, what)
    except OSError as err:
        raise os_error_to_output_error(err, target) from err
    finally:  # KeyboardInterrupt and every other failure land here too
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike, text: str, overwrite: bool = True,
                      what: str = "output file") -> None:
    with atomic_path(target, overwrite, what) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --- folders -----------------------------------------------------------------------------------


def describe_folder(folder: Path, name: Path) -> dict:
    """What an output folder (at ``folder`` now, known as ``name``) holds, from its report when it has one."""
    record: dict = {"folder": str(name)}
    for report_name in ("report.json", "audit.json"):
        with contextlib.suppress(OSError, ValueError):
            report = json.loads((folder / report_name).read_text(encoding="utf-8"))
            if isinstance(report, dict):
                record.update({key: report[key] for key in ("command", "created_at", "argv") if key in report})
                forget = report.get("spec", {}).get("forget") if isinstance(report.get("spec"), dict) else None
                if forget:
                    record["forget"] = forget
                break
    if len(record) == 1:
        with contextlib.suppress(OSError):
            record["files"] = sum(1 for _ in folder.iterdir())
    return record


def replaced_warning(record: dict) -> str:
    """One line saying which output folder ``--overwrite`` replaced."""
    what = []
    if record.get("command"):
        what.append(f"ccup {record['command']}")
    if record.get("forget"):
        what.append(f"forget {', '.join(map(str, record['forget']))}")
    if record.get("created_at"):
        what.append(f"written {record['created_at']}")
    if "files" in record:
        what.append(f"{record['files']} files")
    return f"replaced the existing {record['folder']}" + (f" ({'; '.join(what)})" if what else "")


@dataclass
class CommitReceipt:
    """What ``atomic_dir`` committed: the folder, its identity on disk, and what it replaced.

    ``replaced`` holds one ``describe_folder`` record per folder this commit moved aside (several
    only when other ``--overwrite`` runs committed in between). ``write_text`` rewrites a file in
    the committed folder later, and only while that folder is still this run's.
    """

    folder: Path | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the committed folder
    replaced: list[dict] = field(default_factory=list)

    def still_ours(self) -> bool:
        if self.folder is None or self.identity is None:
            return False
        try:
            st = os.stat(self.folder)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.identity

    def write_text(self, name: str, text: str) -> bool:
        """Write ``name`` atomically into the committed folder; False (nothing written) when a later
        ``--overwrite`` run replaced that folder meanwhile."""
        if self.folder is None:
            return False
        # os.replace takes dir fds wherever os.rename does (supports_dir_fd lists only rename)
        dir_fd_ok = {os.open, os.rename, os.unlink} <= os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
        if not dir_fd_ok:  # check, then write by path (Windows): a tiny window remains
            if not self.still_ours():
                return False
            write_text_atomic(self.folder / name, text)
            return True
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        try:  # the descriptor pins the folder checked here, whatever its name becomes
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.identity:
                return False
            tmp_name = f".{name}.{os.urandom(8).hex()}.tmp"
            out = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=fd)
            try:
                with os.fdopen(out, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp_name, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name, dir_fd=fd)
                raise
        except OSError as err:
            raise os_error_to_output_error(err, self.folder / name) from err
        finally:
            os.close(fd)
        return True


def _commit_dir(tmp: Path, target: Path, overwrite: bool, receipt: CommitReceipt) -> None:
    """Rename the finished ``tmp`` onto ``target``: never over anything without ``overwrite``; with it,
    whatever is there is moved aside first (recorded in ``receipt``) and deleted after."""
    moved_aside: list[Path] = []
    try:
        while not no_replace_rename(tmp, target):
            if not overwrite:
                raise _raced(target, "output folder")
            aside = target.parent / f".{target.name}.replaced-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                os.rename(target, aside)
            except FileNotFoundError:  # another run moved it aside first: try again
                continue
            moved_aside.append(aside)
            receipt.replaced.append(describe_folder(aside, target))
    except BaseException:
        # put back what was there before this run, if nothing took its place
        if moved_aside:
            with contextlib.suppress(OSError):
                if no_replace_rename(moved_aside[-1], target):
                    moved_aside.pop()
        for aside in moved_aside:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    st = os.stat(target)
    receipt.folder, receipt.identity = target, (st.st_dev, st.st_ino)
    for aside in moved_aside:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool, receipt: CommitReceipt | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; it becomes ``target`` only on success.

    Without ``overwrite`` an existing ``target`` is refused at the start, and the commit never
    replaces a folder that appeared meanwhile (another run's): this run then raises
    ``OutputError`` naming it and keeps nothing. With ``overwrite`` the last writer wins: an
    existing ``target`` is replaced only after the new folder is complete, and ``receipt``
    (when given) records what was replaced. On any failure (Ctrl-C included) the temporary
    folder is removed and an existing ``target`` stays as it was.
    """
    target = Path(target).absolute()
    receipt = receipt if receipt is not None else CommitReceipt()
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
        _commit_dir(tmp, target, overwrite, receipt)
    except OSError as err:
        raise os_error_to_output_error(err, target) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
