"""The background-process protocol: progress lines, the done event, errors and cancel.

Most tests start the real CLI (`python -m ScreenerCore predict --progress jsonl`) as a
subprocess. A scripted fake process covers what the real CLI cannot be made to do on demand:
a crash with a traceback, unknown output, a done event without a map.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from module_testing import (
    TEST_CT,
    calibrated_model_folder,  # noqa: F401 (fixture)
    create_headless_slicer,
    load_volume,
)

from ScreenerModuleLib.logic import ScreenerLogic, ScreenerSettings
from ScreenerModuleLib.predict_job import JobState, PredictJob, PredictRequest
from ScreenerModuleLib.process_runner import SubprocessRunner
from ScreenerModuleLib.volume_nodes import array_view

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="checks POSIX process groups")
JOB_TIMEOUT_S = 600


def request_for(input_path: Path, output_path: Path, model_folder: Path) -> PredictRequest:
    return PredictRequest(input_path=input_path, output_path=output_path, python_executable=sys.executable,
                          model=str(model_folder), device="cpu", top_percent=1.0)


def wait_for_stage(job: PredictJob, stage: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while job.stage != stage:
        assert job.poll() is JobState.RUNNING, f"job ended ({job.state}) before reaching {stage}: {job.error_message}"
        assert time.monotonic() < deadline, f"no {stage} progress within {timeout_s} s"
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """Return True when `pid` no longer runs: it does not exist, or it is a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.is_file() and "State:\tZ" in status.read_text()


def test_real_cli_reports_progress_then_done(calibrated_model_folder, shared_ct, tmp_path):
    events = []
    output = tmp_path / "map.nrrd"
    job = PredictJob.start(SubprocessRunner(), request_for(shared_ct(TEST_CT), output, calibrated_model_folder),
                           on_progress=lambda stage, fraction: events.append((stage, fraction)))

    assert job.wait(JOB_TIMEOUT_S) is JobState.SUCCEEDED, job.error_message
    assert job.process.exit_code() == 0
    stages = [stage for stage, _ in events]
    assert stages.index("preprocess") < stages.index("inference") < stages.index("resample")
    fractions = [fraction for _, fraction in events]
    assert fractions == sorted(fractions)
    assert job.fraction == 1.0
    assert job.done.map_path == output
    assert output.is_file()
    assert job.done.model == "tiny-test-model"
    assert len(job.done.calibration["levels"]) == len(job.done.calibration["scores"]) > 10
    assert job.done.floor == pytest.approx(job.done.calibration["scores"][0])


def test_real_cli_error_is_a_readable_message(calibrated_model_folder, tmp_path):
    missing = tmp_path / "no_such_scan.nrrd"
    job = PredictJob.start(SubprocessRunner(), request_for(missing, tmp_path / "map.nrrd", calibrated_model_folder))

    assert job.wait(JOB_TIMEOUT_S) is JobState.FAILED
    assert job.process.exit_code() == 2
    assert str(missing) in job.error_message
    assert "not found" in job.error_message
    assert "Traceback" not in job.error_message


def test_real_cli_unknown_model_names_the_model(shared_ct, tmp_path):
    request = request_for(shared_ct(TEST_CT), tmp_path / "map.nrrd", tmp_path / "no-such-model")
    job = PredictJob.start(SubprocessRunner(), request)

    assert job.wait(JOB_TIMEOUT_S) is JobState.FAILED
    assert "no-such-model" in job.error_message


@posix_only
def test_cancel_ends_real_cli_and_its_group(calibrated_model_folder, shared_ct, tmp_path):
    output = tmp_path / "map.nrrd"
    job = PredictJob.start(SubprocessRunner(), request_for(shared_ct(TEST_CT), output, calibrated_model_folder))
    wait_for_stage(job, "inference")
    pid = job.process.pid

    job.cancel()

    assert job.state is JobState.CANCELLED
    assert job.process.exit_code() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not output.exists()
    assert job.poll() is JobState.CANCELLED


@posix_only
def test_terminate_ends_grandchildren(tmp_path):
    # The child starts a grandchild that would sleep for 5 minutes, prints its pid, then waits.
    script = textwrap.dedent("""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print(grandchild.pid, flush=True)
        time.sleep(300)
    """)
    process = SubprocessRunner().start([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    lines = []
    while not lines:
        assert time.monotonic() < deadline, "the child did not print its grandchild's pid"
        lines = process.read_stdout_lines()
        time.sleep(0.05)
    grandchild = int(lines[0])
    assert not process_gone(grandchild)

    process.terminate()

    assert process.exit_code() is not None
    # Once killed, the orphaned grandchild is reaped by init; allow a moment for that.
    deadline = time.monotonic() + 10
    while not process_gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(grandchild)


def test_cancel_leaves_scene_unchanged(calibrated_model_folder, shared_ct, tmp_path):
    headless = create_headless_slicer()
    input_node = load_volume(headless, shared_ct(TEST_CT))
    voxels_before = array_view(input_node).copy()
    node_ids_before = [headless.scene.GetNthNode(index).GetID() for index in range(headless.scene.GetNumberOfNodes())]
    scene_mtime_before = headless.scene.GetMTime()
    logic = ScreenerLogic(headless.scene, headless.volume_rendering_logic, temporary_folder=tmp_path / "work")
    run = logic.start(input_node, ScreenerSettings(model=str(calibrated_model_folder), device="cpu"))
    wait_for_stage(run.job, "inference")

    run.cancel()

    assert run.state is JobState.CANCELLED
    assert run.poll() is JobState.CANCELLED
    assert run.result is None
    node_ids_after = [headless.scene.GetNthNode(index).GetID() for index in range(headless.scene.GetNumberOfNodes())]
    assert node_ids_after == node_ids_before
    assert headless.scene.GetMTime() == scene_mtime_before
    np.testing.assert_array_equal(array_view(input_node), voxels_before)
    assert list((tmp_path / "work").iterdir()) == [], "the exported input and partial outputs must be deleted"


def test_request_environment_puts_core_first_on_pythonpath():
    request = PredictRequest(input_path=Path("in.nrrd"), output_path=Path("out.nrrd"), python_executable="python",
                             python_paths=["/opt/slicer/qt-scripted-modules"])
    environment = request.environment({"PYTHONPATH": os.pathsep.join(["/site", "/opt/slicer/qt-scripted-modules"])})
    assert environment["PYTHONPATH"].split(os.pathsep) == ["/opt/slicer/qt-scripted-modules", "/site"]
    assert environment["PYTHONUNBUFFERED"] == "1"


def test_request_command_passes_options():
    request = PredictRequest(input_path=Path("in.nrrd"), output_path=Path("out.nrrd"), python_executable="python",
                             model="screener-ct-small", device="gpu", top_percent=0.25)
    command = request.command()
    assert command[:4] == ["python", "-m", "ScreenerCore", "predict"]
    assert command[command.index("--device") + 1] == "gpu"
    assert command[command.index("--threshold") + 1] == "0.25"
    assert command[command.index("--model") + 1] == "screener-ct-small"
    assert command[command.index("--progress") + 1] == "jsonl"


class ScriptedProcess:
    """A fake RunningProcess that replays stdout lines, stderr lines and an exit code."""

    def __init__(self, stdout_lines, exit_code, stderr_lines=()):
        self.pending = list(stdout_lines)
        self.code = exit_code
        self.stderr = list(stderr_lines)
        self.terminated = False

    def read_stdout_lines(self):
        lines, self.pending = self.pending, []
        return lines

    def exit_code(self):
        return None if self.pending else self.code

    def stderr_tail(self):
        return self.stderr

    def terminate(self):
        self.terminated = True

    def wait(self, timeout_s=None):
        return self.code


def finished_job(stdout_lines, exit_code, stderr_lines=()):
    job = PredictJob(ScriptedProcess(stdout_lines, exit_code, stderr_lines))
    job.poll()
    job.poll()
    return job


def test_crash_reports_last_stderr_line_only():
    stderr = ["Traceback (most recent call last):", '  File "/x/cli.py", line 3, in <module>',
              "    import safetensors", "ModuleNotFoundError: No module named 'safetensors'"]
    job = finished_job(['{"event": "progress", "stage": "preprocess", "fraction": 0.0}'], 1, stderr)

    assert job.state is JobState.FAILED
    assert "ModuleNotFoundError: No module named 'safetensors'" in job.error_message
    assert "exit code 1" in job.error_message
    assert "Traceback" not in job.error_message
    assert 'File "' not in job.error_message


def test_killed_process_reports_signal():
    job = finished_job([], -9)
    assert job.state is JobState.FAILED
    assert "signal 9" in job.error_message


def test_non_json_and_unknown_lines_are_ignored():
    lines = ["a library printed this", "[1, 2]", '{"event": "heartbeat"}',
             '{"event": "progress", "stage": "inference", "fraction": 0.5}',
             '{"event": "done", "outputs": {"map": "/tmp/map.nrrd"}, "threshold": 3.5}']
    job = finished_job(lines, 0)
    assert job.state is JobState.SUCCEEDED
    assert job.done.map_path == Path("/tmp/map.nrrd")
    assert job.done.calibration is None


def test_done_without_map_fails():
    job = finished_job(['{"event": "done", "outputs": {}, "threshold": 3.5}'], 0)
    assert job.state is JobState.FAILED
    assert "no map output" in job.error_message


def test_exit_zero_without_done_fails():
    job = finished_job(['{"event": "progress", "stage": "inference", "fraction": 1.0}'], 0)
    assert job.state is JobState.FAILED
    assert "without reporting a result" in job.error_message


def test_error_event_wins_over_exit_code():
    job = finished_job(['{"event": "error", "message": "Input \'x.nrrd\' not found."}'], 2,
                       ["screener: error: Input 'x.nrrd' not found."])
    assert job.error_message == "Input 'x.nrrd' not found."


def test_progress_never_runs_backwards():
    seen = []
    process = ScriptedProcess(['{"event": "progress", "stage": "inference", "fraction": 0.5}',
                               '{"event": "progress", "stage": "preprocess", "fraction": 1.0}',
                               '{"event": "progress", "stage": "inference", "fraction": 0.75}'], None)
    job = PredictJob(process, on_progress=lambda stage, fraction: seen.append(fraction))
    assert job.poll() is JobState.RUNNING
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(0.1 + 0.8 * 0.75)


def test_cancel_terminates_fake_process():
    process = ScriptedProcess([], None)
    job = PredictJob(process)
    job.cancel()
    assert process.terminated
    assert job.state is JobState.CANCELLED
