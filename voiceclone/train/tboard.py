"""Optional TensorBoard scalars (`train --tensorboard`): every number of a history row, per epoch.

Written beside `history.jsonl`, in `RUN/<stage>/tensorboard/`; history.jsonl stays the record the tool
itself reads. The `tensorboard` package is an extra (`pip install 'voiceclone[tensorboard]'`).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Mapping

from voiceclone.errors import UserError

FOLDER = "tensorboard"


def require() -> None:
    """Fail before training starts, in one line, when the package is missing."""
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'voiceclone[tensorboard]' "
                        "(or pip install tensorboard)") from None


class Scalars:
    """One event file per stage; `write(row)` logs the row's numbers at step = its epoch."""

    def __init__(self, stage_dir: Path, stage: str) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.stage = stage
        self.writer = SummaryWriter(log_dir=str(Path(stage_dir) / FOLDER))

    def write(self, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{self.stage}/{key}", value, global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
