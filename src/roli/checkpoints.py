"""Safe torch checkpoint IO (ground floor): `weights_only=True` loads of verified files and atomic saves that never
clobber what the user keeps.

A half-written file is never loaded as valid: files are written atomically (roli.files), and before loading, a zip
checkpoint (torch.save's format) has its central directory and the CRC-32 of every record checked, so a truncated
file or one with flipped bytes is a CheckpointError instead of silently wrong weights.
"""

from __future__ import annotations

import errno
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from roli.errors import CheckpointError, OutputExists
from roli.files import write_atomic


def verify_file(path: Path) -> None:
    """A zip checkpoint must be complete (its central directory is at the end) and every record must match its
    CRC-32; other files (torch's legacy format, or not a checkpoint at all) are left to torch.load to judge."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if magic != b"PK\x03\x04":
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): a torch "
                              f"zip file whose end is missing ({e}); it was cut short, e.g. by a full disk or an "
                              "interrupted copy") from None
    if bad is not None:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): record "
                              f"{bad!r} fails its CRC check, the file is corrupt; copy or download it again") from None


def load_file(path: str | Path) -> Any:
    """A checkpoint file loaded on the CPU with `weights_only=True` after `verify_file`; every way it can fail (no
    such file, a folder, an HTML page, a pickle that needs code, a truncated zip) is one CheckpointError line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist as a file (it is a folder); pass the path of a local "
                              "weights file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a local weights file")
    verify_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"cannot read {path}: permission denied ({e.strerror or e})") from None
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
            if path.read_bytes()[:64].lstrip().lower().startswith((b"<!doctype", b"<html")):
                raise CheckpointError(f"{path} is not a torch checkpoint: it is an HTML page (a download that got an "
                                      "error or login page?); download the weights file again") from None
            raise CheckpointError(f"{path} is not a torch checkpoint (corrupt, or e.g. a saved HTML page): the "
                                  f"weights-only unpickler stopped at: {_unpickler_reason(e)}") from None
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True (it needs code to unpickle: {_unpickler_reason(e)}). "
            "roli does not run code from checkpoints; re-save it as a plain state_dict with torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): {e}") from None


def _unpickler_reason(e: Exception) -> str:
    """The useful part of torch's long weights-only error: `Unsupported global: GLOBAL io.open`, `Unsupported
    operand 60`, ... (without its advice to load with weights_only=False, which roli never does)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global| Please use|\n|$)", text, re.DOTALL)
    return m.group(1).strip() if m else text.strip().splitlines()[0]


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, flush it, then rename: a kill never leaves a half-written file, and
    a failing write (disk full, permission denied: roli.errors.WriteError) leaves the previous file as it was."""
    write_atomic(path, lambda tmp: _torch_save(obj, tmp))


FULL_BELOW = 1 << 20  # bytes free on the file system below which a failed torch.save counts as a full disk


def _torch_save(obj: Any, tmp: Path) -> None:
    """torch.save, with the write failure of torch's zip writer (a RuntimeError such as `unexpected pos 704 vs
    598`, seen on a full tmpfs) turned into the OSError it is, so `write_atomic` explains it in one line."""
    try:
        torch.save(obj, tmp)
    except RuntimeError as e:
        try:
            full = shutil.disk_usage(tmp.parent).free < FULL_BELOW
        except OSError:
            full = False
        reason = " ".join(str(e).split())[:200]
        raise OSError(errno.ENOSPC if full else errno.EIO, f"torch.save failed ({reason})") from e


def save_new(obj: Any, path: str | Path) -> None:
    """Save a file the user keeps (an export): refuse to overwrite an existing one."""
    if Path(path).exists():
        raise OutputExists(f"{path} exists; roli does not overwrite it. Choose another path or remove it.")
    atomic_save(obj, path)
