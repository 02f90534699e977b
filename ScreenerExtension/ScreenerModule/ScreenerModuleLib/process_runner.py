"""Background processes for the module: a small protocol, and an implementation on `subprocess`.

The module talks to the Screener CLI only through `ProcessRunner` and `RunningProcess`, so
tests can inject a scripted fake and Slicer never blocks on a pipe: reader threads fill
queues, and the caller polls them from its own (GUI) thread.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

logger = logging.getLogger(__name__)

# Seconds a process gets to exit after SIGTERM before it and its group are killed.
TERMINATE_GRACE_S = 5.0
# Lines of stderr kept for error messages; older lines are only in the log.
STDERR_TAIL_LINES = 200


class RunningProcess(Protocol):
    """A started process whose stdout arrives as lines and which can be ended with its children."""

    def read_stdout_lines(self) -> list[str]:
        """Return the stdout lines received since the last call, without blocking."""

    def exit_code(self) -> int | None:
        """Return the exit code, or None while the process runs or its output is still being read."""

    def stderr_tail(self) -> list[str]:
        """Return the last lines the process wrote to stderr."""

    def terminate(self) -> None:
        """End the process and every process it started; return once they are gone."""

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until the process exits and its output is read; return the exit code (None on timeout)."""


class ProcessRunner(Protocol):
    """Starts processes; the logic gets one so that tests can replace real processes."""

    def start(self, command: Sequence[str], environment: Mapping[str, str] | None = None) -> RunningProcess:
        """Start `command` with `environment` (None: inherit this process's environment)."""


class SubprocessRunner:
    """Runs commands with `subprocess.Popen`, each in its own process group (a new session on POSIX)."""

    def start(self, command: Sequence[str], environment: Mapping[str, str] | None = None) -> "SubprocessHandle":
        return SubprocessHandle(list(command), None if environment is None else dict(environment))


class SubprocessHandle:
    """A process started by SubprocessRunner; threads read its stdout and stderr line by line."""

    def __init__(self, command: list[str], environment: dict[str, str] | None):
        options = {}
        if sys.platform == "win32":
            # A new process group lets taskkill /T end the whole tree; no console window pops up.
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            # A new session makes the child the leader of a new process group, so killpg reaches
            # every process it starts (e.g. data-loader workers) and nothing of Slicer's.
            options["start_new_session"] = True

        logger.info("Starting %s", " ".join(command))
        self.command = command
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=environment, text=True, encoding="utf-8", errors="replace", bufsize=1, **options,
        )
        self._stdout_lines: queue.Queue[str] = queue.Queue()
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._readers = [
            threading.Thread(target=self._read_stdout, name="screener-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="screener-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            self._stdout_lines.put(line.rstrip("\r\n"))
        self._process.stdout.close()

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            line = line.rstrip("\r\n")
            self._stderr_lines.append(line)
            logger.info("screener: %s", line)
        self._process.stderr.close()

    def _output_read(self) -> bool:
        return not any(reader.is_alive() for reader in self._readers)

    def read_stdout_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._stdout_lines.get_nowait())
            except queue.Empty:
                return lines

    def exit_code(self) -> int | None:
        code = self._process.poll()
        if code is None or not self._output_read():
            return None
        return code

    def stderr_tail(self) -> list[str]:
        return list(self._stderr_lines)

    def wait(self, timeout_s: float | None = None) -> int | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.exit_code()

    def terminate(self) -> None:
        if self._process.poll() is None:
            logger.info("Ending process %d and its children", self._process.pid)
        if sys.platform == "win32":
            self._terminate_windows()
        else:
            self._terminate_posix()
        self._process.wait()
        for reader in self._readers:
            reader.join(TERMINATE_GRACE_S)

    def _terminate_posix(self) -> None:
        group = self._process.pid
        # The group outlives its leader when children keep running, so signal the group even
        # when the leader has exited already.
        if not _signal_group(group, signal.SIGTERM):
            return
        deadline = time.monotonic() + TERMINATE_GRACE_S
        while time.monotonic() < deadline:
            self._process.poll()
            if not _group_exists(group):
                return
            time.sleep(0.05)
        logger.warning("Process group %d did not exit %.0f s after SIGTERM; killing it", group, TERMINATE_GRACE_S)
        _signal_group(group, signal.SIGKILL)

    def _terminate_windows(self) -> None:
        # taskkill /T ends the whole tree; Popen.kill would leave the children running.
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True, check=False)
        if self._process.poll() is None:
            self._process.kill()


def _signal_group(group: int, signal_number: int) -> bool:
    """Send a signal to a process group; return False when the group no longer exists."""
    try:
        os.killpg(group, signal_number)
    except ProcessLookupError:
        return False
    return True


def _group_exists(group: int) -> bool:
    # Signal 0 checks for existence only. A zombie leader still counts until it is reaped,
    # which is why the caller polls the Popen object in the same loop.
    return _signal_group(group, 0)
