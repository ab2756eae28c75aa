"""Crash-safe file writes and careful reads (ground floor: imports only roli.errors).

Every file roli writes (checkpoints, results.json, config.yaml, reports, AutoAttack state) goes through
`write_atomic`: the content is written to a temp file in the same folder, flushed to disk, then renamed over the
target. A kill at any moment leaves the old file or the new one, never half of one; a failing write (disk full,
permission denied) raises WriteError, removes its temp file and leaves the previous version as it was.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roli.errors import ResultsError, WriteError

TEMP_SUFFIX = ".tmp"


def temp_files(path: Path) -> list[Path]:
    """Temp files that `write_atomic(path)` makes (left behind only by a kill)."""
    return sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))


def _orphaned(tmp: Path, path: Path) -> bool:
    """A temp file of `path` whose writer is gone: its process (the pid in its name) no longer runs here, or, when the
    name carries no pid, it is over an hour old. Another live writer's temp file (two sweep shards writing one
    report at once) is left alone."""
    pid = tmp.name[len(path.name) + 2:].split("-", 1)[0]
    if pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:  # it runs, under another user
            return False
        return False
    try:
        return time.time() - tmp.stat().st_mtime > 3600
    except OSError:
        return False


def replace_into(tmp: Path, path: Path) -> None:
    """The commit step of an atomic write: rename the finished temp file over `path` and make the rename durable."""
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles: the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _explain(e: OSError, path: Path) -> WriteError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EROFS: "the file system is read-only"}.get(e.errno or -1, e.strerror or str(e))
    err = WriteError(f"cannot write {path}: {why} ({type(e).__name__}: {e.strerror or e}); the previous "
                     f"{path.name} (if any) is unchanged. Free space or fix the permissions, then run again "
                     "(an interrupted run continues with `roli run --resume <run folder>`)")
    err.errno, err.filename = e.errno, str(path)
    return err


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file beside `path`; it is flushed to disk, then renamed over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in temp_files(path):  # left by a killed writer of this very file
            if _orphaned(stale, path):
                stale.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_SUFFIX)
        os.close(fd)
    except OSError as e:
        raise _explain(e, path) from e
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the content reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; keep the user's usual permissions
        replace_into(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, WriteError):
            raise
        raise _explain(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (see `write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically (see `write_atomic`)."""
    atomic_write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file roli wrote; a truncated or foreign file is a ResultsError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} is not a readable {what} (truncated or edited? {e})") from None


def discard_unstarted(run_dir: Path, own: Iterable[str] = ("config.yaml", "train.log")) -> bool:
    """Remove a run folder that holds only what roli makes before training starts (its config, its log, temp
    files); anything else in it is left alone. Returns True if it was removed."""
    if not run_dir.is_dir():
        return False
    own = set(own)
    entries = list(run_dir.iterdir())
    if any(p.is_dir() or not (p.name in own or (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)))
           for p in entries):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256sum(path: str | Path) -> str:
    """The file's SHA-256 (cached per path, size and modification time: a replaced file is hashed again)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` (fcntl.flock; the file is made if needed and left for the next user) for the
    `with` block: another roli process that asks for the same lock waits. Two runs in one --out share a RoLI stage 1
    and a report this way instead of writing them at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
