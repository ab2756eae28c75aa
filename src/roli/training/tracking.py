"""Per-epoch tracking beside the run: `metrics.csv` (always, rewritten from the history after every epoch, so a
resumed run's file is complete) and TensorBoard scalars (`run.tensorboard: true`, when the package is installed)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from roli.config import ConfigError
from roli.files import atomic_write_text

log = logging.getLogger(__name__)


def write_metrics_csv(history: list[dict], run_dir: Path) -> Path:
    """One row per epoch with every history field; written atomically (never half a file)."""
    path = run_dir / "metrics.csv"
    fields = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())
    return path


class TensorBoard:
    """Scalars per epoch under run_dir/tensorboard (`tensorboard --logdir runs/`); a clear error without the package."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("run.tensorboard: true needs the tensorboard package: pip install tensorboard "
                              "(or set run.tensorboard: false; metrics.csv is always written)") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict) -> None:
        """The row's numbers as scalars at its epoch."""
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
