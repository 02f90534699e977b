"""One run of `python -m ScreenerCore predict ... --progress jsonl`: its command line and its JSON-lines events.

The CLI prints one JSON object per line on stdout:
  {"event": "progress", "stage": "preprocess" | "inference" | "resample", "fraction": 0..1}
  {"event": "done", "outputs": {"map": PATH, ...}, "threshold": ..., "floor": ..., "calibration": ..., ...}
  {"event": "error", "message": "..."}   (then exit code 2)
Logs go to stderr. PredictJob turns these lines into a state the GUI or a script can poll.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .process_runner import ProcessRunner, RunningProcess

logger = logging.getLogger(__name__)

# Share of the whole job that each CLI stage stands for, for one overall progress bar.
# Inference dominates the run time on every machine measured; the split is an estimate.
STAGE_SPANS = {"preprocess": (0.0, 0.1), "inference": (0.1, 0.9), "resample": (0.9, 1.0)}
# Seconds between polls in blocking waits.
POLL_INTERVAL_S = 0.1


class JobState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class PredictRequest:
    """The job's input file, output file and CLI options."""

    input_path: Path
    output_path: Path
    python_executable: str
    model: str | None = None
    # "auto", "cpu" or "gpu"/"cuda"; the CLI checks it.
    device: str = "auto"
    # Findings threshold the CLI reports in its done event, in % of normal tissue.
    top_percent: float = 0.5
    # Folders prepended to PYTHONPATH so the child finds ScreenerCore where Slicer installed it.
    python_paths: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        command = [self.python_executable, "-m", "ScreenerCore", "predict", str(self.input_path),
                   "-o", str(self.output_path), "--device", self.device, "--threshold", f"{self.top_percent:g}",
                   "--progress", "jsonl"]
        if self.model:
            command += ["--model", self.model]
        return command

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        environment = dict(os.environ if base is None else base)
        paths = [*self.python_paths, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
        if paths:
            environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        # Unbuffered output, so progress lines arrive while the job runs, not when it ends.
        environment["PYTHONUNBUFFERED"] = "1"
        return environment


@dataclass
class DoneEvent:
    """The CLI's final report."""

    map_path: Path
    threshold: float
    floor: float | None
    # {"levels": [...], "scores": [...]} of the model, or None for an uncalibrated model.
    calibration: dict | None
    model: str | None
    device: str | None
    seconds: float | None
    finding_count: int | None

    @classmethod
    def from_json(cls, event: dict) -> "DoneEvent":
        outputs = event.get("outputs") or {}
        if "map" not in outputs:
            raise ValueError(f"The done event has no map output: {event}")
        return cls(map_path=Path(outputs["map"]), threshold=float(event["threshold"]), floor=event.get("floor"),
                   calibration=event.get("calibration"), model=event.get("model"), device=event.get("device"),
                   seconds=event.get("seconds"), finding_count=event.get("findings"))


ProgressCallback = Callable[[str, float], None]


class PredictJob:
    """A running CLI process and what it has reported so far. Call poll() regularly, or wait()."""

    def __init__(self, process: RunningProcess, on_progress: ProgressCallback | None = None):
        self.process = process
        self.on_progress = on_progress
        self.state = JobState.RUNNING
        self.stage = "starting"
        # Overall fraction done, from 0 to 1, combining the stages by STAGE_SPANS.
        self.fraction = 0.0
        self.done: DoneEvent | None = None
        self.error_message: str | None = None

    @classmethod
    def start(cls, runner: ProcessRunner, request: PredictRequest,
              on_progress: ProgressCallback | None = None) -> "PredictJob":
        process = runner.start(request.command(), request.environment())
        return cls(process, on_progress)

    def poll(self) -> JobState:
        """Handle the output received so far; return the state (RUNNING until the process has exited)."""
        if self.state is not JobState.RUNNING:
            return self.state
        for line in self.process.read_stdout_lines():
            self._handle_line(line)
        exit_code = self.process.exit_code()
        if exit_code is None:
            return self.state
        # Lines that arrived between the read above and the exit.
        for line in self.process.read_stdout_lines():
            self._handle_line(line)
        self._finish(exit_code)
        return self.state

    def wait(self, timeout_s: float | None = None) -> JobState:
        """Poll until the job ends; on timeout, cancel it and raise TimeoutError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.poll() is JobState.RUNNING:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"Screener did not finish within {timeout_s:.0f} s and was stopped.")
            time.sleep(POLL_INTERVAL_S)
        return self.state

    def cancel(self) -> None:
        """End the process and its children; the job's outputs are discarded."""
        if self.state is not JobState.RUNNING:
            return
        self.process.terminate()
        self.state = JobState.CANCELLED
        self.stage = "cancelled"
        logger.info("Screener job cancelled")

    def _handle_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            # Something else printed to stdout (a library's print); keep it in the log only.
            logger.info("screener stdout: %s", line)
            return
        if not isinstance(event, dict):
            logger.info("screener stdout: %s", line)
            return

        kind = event.get("event")
        if kind == "progress":
            self._handle_progress(str(event.get("stage", "")), float(event.get("fraction", 0.0)))
        elif kind == "done":
            try:
                self.done = DoneEvent.from_json(event)
            except (KeyError, TypeError, ValueError) as error:
                self.error_message = f"Screener reported a result that cannot be read: {error}"
        elif kind == "error":
            self.error_message = str(event.get("message") or "Screener failed without a message.")
        else:
            logger.info("Ignoring unknown Screener event %r", kind)

    def _handle_progress(self, stage: str, stage_fraction: float) -> None:
        start, end = STAGE_SPANS.get(stage, (self.fraction, self.fraction))
        stage_fraction = min(max(stage_fraction, 0.0), 1.0)
        # Progress never runs backwards, even if stages arrive out of order.
        self.fraction = max(self.fraction, start + (end - start) * stage_fraction)
        self.stage = stage
        if self.on_progress is not None:
            self.on_progress(stage, self.fraction)

    def _finish(self, exit_code: int) -> None:
        if exit_code == 0 and self.done is not None and self.error_message is None:
            self.state = JobState.SUCCEEDED
            self.stage = "done"
            self.fraction = 1.0
            return

        self.state = JobState.FAILED
        self.stage = "failed"
        if self.error_message is None:
            self.error_message = self._describe_crash(exit_code)
        logger.error("Screener failed (exit code %d): %s", exit_code, self.error_message)

    def _describe_crash(self, exit_code: int) -> str:
        """Return a short message for a process that ended without an error event."""
        if exit_code == 0:
            return "Screener finished without reporting a result. See the Python log for its output."
        # The last stderr line of a crash is the exception ("ModuleNotFoundError: ..."). The traceback
        # above it stays in the log, because it means nothing to a radiologist.
        lines = [line.strip() for line in self.process.stderr_tail() if line.strip()]
        detail = f" {lines[-1]}" if lines else ""
        if exit_code < 0:
            return (f"Screener was stopped by signal {-exit_code}, for example because the computer ran out "
                    f"of memory.{detail} See the Python log for details.")
        return f"Screener failed with exit code {exit_code}.{detail} See the Python log for details."
