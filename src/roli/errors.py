"""roli's error types (ground floor: imports nothing of roli).

Every error roli raises for a user mistake or a fault of the machine it runs on (bad recipe, missing file, full disk,
out of memory) derives from `RoliError`, and each class also derives from the builtin exception it had before
(`except ValueError` keeps working). The CLI prints a RoliError as one line and exits 2; any other exception is a bug
in roli and keeps its traceback.

    RoliError
    ├── ConfigError (ValueError)           a recipe, --set override, grid or CLI option is invalid
    ├── UnknownName (KeyError)             a backbone/method/attack/dataset/format name that is not registered
    ├── BackboneError (ValueError)         a backbone cannot be built as asked (e.g. hub weights)
    ├── UnsupportedBackbone (ValueError)   a transfer method cannot adapt this backbone
    ├── CheckpointError (ValueError)       a weights file is missing, corrupt, unsafe or does not fit
    ├── HeadError (ValueError)             a RoLI head does not fit the stage-2 model
    ├── DataError (ValueError)             a dataset folder/file is missing, malformed or unreadable
    ├── ResultsError (ValueError)          a results.json (or other roli JSON) is unreadable or not roli's
    ├── StateMismatch (ValueError)         an AutoAttack state file belongs to another model/data/attack
    ├── RunDirError (FileExistsError)      a run folder would be overwritten, or is not a roli run
    ├── OutputExists (FileExistsError)     an output file exists and roli does not overwrite it
    ├── WriteError (OSError)               a file could not be written (disk full, permission denied)
    ├── DeviceError (RuntimeError)         the requested device is not available
    ├── OutOfMemory (RuntimeError)         the device ran out of memory (the message names the batch size)
    └── TrainingFailed (RuntimeError)      training stopped (non-finite loss); the last good checkpoint is kept
"""

from __future__ import annotations


class RoliError(Exception):
    """Base of every error roli raises for a user mistake or an environment fault (printed as one line)."""


class ConfigError(RoliError, ValueError):
    """A recipe or override is invalid; the message names the key and the fix."""


class UnknownName(RoliError, KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError's str() would quote the whole message
        return str(self.args[0]) if self.args else ""


class BackboneError(RoliError, ValueError):
    """A backbone cannot be built as asked."""


class UnsupportedBackbone(RoliError, ValueError):
    """A transfer method cannot adapt this backbone; the message names the backbones it supports."""


class CheckpointError(RoliError, ValueError):
    """A weights file is missing, unreadable, unsafe, or does not fit the architecture."""


class HeadError(RoliError, ValueError):
    """A RoLI head does not fit the stage-2 model."""


class DataError(RoliError, ValueError):
    """A dataset folder is missing, has the wrong layout, or holds an unreadable file."""


class ResultsError(RoliError, ValueError):
    """A results.json (or another JSON file roli wrote) is unreadable, or not one of roli's."""


class StateMismatch(RoliError, ValueError):
    """The state file belongs to another model, data order or attack configuration."""


class RunDirError(RoliError, FileExistsError):
    """A run folder would be overwritten, or a resume folder is not a roli run."""


class OutputExists(RoliError, FileExistsError):
    """An output file exists; roli does not overwrite it."""


class WriteError(RoliError, OSError):
    """A file could not be written (disk full, permission denied, ...); the previous version is unchanged."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] ...: 'path'"
        return str(self.args[0]) if self.args else ""


class DeviceError(RoliError, RuntimeError):
    """The requested device is not available."""


class OutOfMemory(RoliError, RuntimeError):
    """The device ran out of memory; the message names the batch size to lower."""


class TrainingFailed(RoliError, RuntimeError):
    """Training stopped (non-finite loss); the last good checkpoint is kept."""


class UsageError(RoliError, ValueError):
    """A command line that cannot work as given (e.g. recipes and --resume together); exit 2 like any bad input."""


def one_line(e: BaseException) -> str:
    """An error's message on one line. An error re-raised from a DataLoader worker carries the worker's traceback
    in its message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep only the
    original message."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        for p in (prefix, f"{type(e).__name__}: "):
            if last.startswith(p):
                last = last[len(p):]
                break
        msg = f"{last} (in a DataLoader worker)"
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())
