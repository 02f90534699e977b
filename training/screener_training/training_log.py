"""Per-step training logs: loss terms and throughput as CSV rows, optionally also as TensorBoard scalars."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class TrainingLog:
    """Writes step, seconds, loss terms and samples per second every `every` steps and at the last step.

    A resumed run appends to the existing CSV. Only rank 0 should create one.
    """

    def __init__(self, path: Path | None, every: int = 10, tensorboard_dir: Path | None = None, append: bool = False):
        self.every = max(1, every)
        self.handle = None
        self.writer = None
        self.columns: list[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            append = append and path.is_file() and path.stat().st_size > 0
            self.handle = open(path, "a" if append else "w", newline="", encoding="utf-8")
            self.writer = csv.writer(self.handle)
            if append:
                with open(path, newline="", encoding="utf-8") as existing:
                    self.columns = next(csv.reader(existing))
        self.tensorboard = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional dependency
            except ImportError as error:
                raise RuntimeError("TensorBoard logging needs the 'tensorboard' package: "
                                   "pip install 'screener[training]', or log to CSV only.") from error
            self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def record(self, step: int, total_steps: int, seconds: float, values: dict[str, float]) -> None:
        if step % self.every != 0 and step != total_steps - 1:
            return
        if self.writer is not None:
            if self.columns is None:
                self.columns = ["step", "seconds", *values]
                self.writer.writerow(self.columns)
            row = {"step": step, "seconds": round(seconds, 1), **values}
            self.writer.writerow([row.get(column, "") for column in self.columns])
            self.handle.flush()
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
