"""JobRunner: one slot, cooperative stop within a step, failures keep message + traceback tail."""
import threading
import time

import pytest

from core.protocol.jobs import JobBusy, JobRunner, JobStopped


def _loop(progress=None, stop=None, steps=1000, delay=0.005, seen=None):
    for step in range(1, steps + 1):
        if stop is not None and stop.is_set():
            return {"stopped": True, "step": step}
        time.sleep(delay)
        if seen is not None:
            seen.append(step)
        progress({"stage": "loop", "step": step, "total": steps, "loss": 1.0 / step})
    return {"steps": steps}


def _wait_for(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_done_reports_progress_and_result():
    runner = JobRunner()
    runner.start("loop", _loop, steps=5, delay=0.0)
    status = runner.wait(5)
    assert status["state"] == "done"
    assert status["progress"] == 1.0 and status["step"] == 5 and status["total"] == 5
    assert runner.result() == {"steps": 5}


def test_one_slot_and_stop_within_one_step():
    runner = JobRunner()
    seen: list[int] = []
    runner.start("loop", _loop, steps=10_000, delay=0.01, seen=seen)
    assert _wait_for(lambda: runner.status()["step"] >= 3)
    with pytest.raises(JobBusy, match="'loop' is running"):
        runner.start("other", _loop)
    assert 0 < runner.status()["progress"] < 1
    assert "loss" in runner.status()["message"]
    runner.stop()
    at_stop = len(seen)
    status = runner.wait(5)
    assert status["state"] == "stopped"
    assert len(seen) <= at_stop + 1          # at most the step in flight finishes
    # the slot is free again
    runner.start("again", _loop, steps=2, delay=0.0)
    assert runner.wait(5)["state"] == "done"


def test_failure_keeps_message_and_traceback_tail():
    def broken(progress=None, stop=None):
        progress({"stage": "x", "step": 1, "total": 2})
        raise ValueError("pretrain.batch_size is too large for 3 images")

    runner = JobRunner()
    runner.start("broken", broken)
    status = runner.wait(5)
    assert status["state"] == "failed"
    assert status["error"] == "ValueError: pretrain.batch_size is too large for 3 images"
    assert "raise ValueError" in status["traceback"]
    assert runner.result() is None


def test_jobstopped_from_callback_ends_as_stopped():
    def job(progress=None, stop=None):
        for step in range(100):
            if stop.is_set():
                raise JobStopped()
            progress({"step": step, "total": 100})
            time.sleep(0.005)

    runner = JobRunner()
    runner.start("j", job)
    assert _wait_for(lambda: runner.status()["step"] > 1)
    assert runner.stop() is True
    assert runner.wait(5)["state"] == "stopped"
    assert runner.stop() is False


def test_status_is_shared_across_threads():
    runner = JobRunner()
    gate = threading.Event()

    def job(progress=None, stop=None):
        progress({"stage": "s", "step": 1, "total": 4})
        gate.wait(5)

    runner.start("shared", job)
    seen = {}
    t = threading.Thread(target=lambda: seen.update(runner.status()))
    assert _wait_for(lambda: runner.status()["step"] == 1)
    t.start(); t.join()
    assert seen["state"] == "running" and seen["name"] == "shared" and seen["progress"] == 0.25
    gate.set()
    assert runner.wait(5)["state"] == "done"


def test_before_job_hook_runs_in_the_job_thread_and_can_fail_it():
    seen = []
    runner = JobRunner(before_job=lambda: seen.append(threading.current_thread().name))
    runner.start("hooked", _loop, steps=1, delay=0.0)
    assert runner.wait(5)["state"] == "done" and seen == ["job-hooked"]

    def broken_hook():
        raise RuntimeError("cannot reset")
    runner = JobRunner(before_job=broken_hook)
    runner.start("x", _loop, steps=1, delay=0.0)
    status = runner.wait(5)
    assert status["state"] == "failed" and "cannot reset" in status["error"]


def test_a_full_disk_fails_the_job_with_one_line_naming_the_path():
    import errno

    from safetensors import SafetensorError

    from core.io import naming_path

    def job(progress, stop):
        with naming_path("/ws/models/unet"):
            raise SafetensorError('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    runner = JobRunner()
    runner.start("pretrain", job)
    status = runner.wait(10)
    assert status["state"] == "failed" and status["traceback"] == ""
    assert status["error"] == "cannot write /ws/models/unet: No space left on device"

    def read_only(progress, stop):
        raise OSError(errno.EROFS, "Read-only file system", "/ws/metrics/pretrain.jsonl")
    runner.start("pretrain", read_only)
    assert runner.wait(10)["error"] == "cannot write /ws/metrics/pretrain.jsonl: Read-only file system"


def test_a_failed_append_leaves_no_torn_line(tmp_path, monkeypatch):
    import errno

    from core import io
    path = tmp_path / "m.jsonl"
    io.append_jsonl(path, {"step": 1})

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()
    real_open = open
    monkeypatch.setattr(io, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError):
        io.append_jsonl(path, {"step": 2})
    monkeypatch.undo()
    io.append_jsonl(path, {"step": 3})
    assert [r["step"] for r in io.read_jsonl(path)] == [1, 3]


def test_hold_keeps_jobs_out_and_waits_for_none():
    """A synchronous destructive action holds the slot: no job starts meanwhile, and it is
    refused while a job runs."""
    runner = JobRunner()
    with runner.hold("export"):
        with pytest.raises(JobBusy, match="'export' is running"):
            runner.start("run", _loop)
    release = threading.Event()
    runner.start("run", lambda progress, stop: release.wait(10))
    with pytest.raises(JobBusy, match="'run' is running"):
        with runner.hold("export"):
            pass
    release.set()
    runner.wait(10)
    with runner.hold("export"):
        pass


def test_setup_runs_only_with_the_slot():
    runner = JobRunner()
    release, calls = threading.Event(), []
    runner.start("pretrain", lambda progress, stop: release.wait(10))
    with pytest.raises(JobBusy):
        runner.start("pretrain", _loop, setup=lambda: calls.append("archived"))
    assert calls == []
    release.set()
    runner.wait(10)
    runner.start("pretrain", _loop, setup=lambda: calls.append("archived"), steps=1)
    assert runner.wait(10)["state"] == "done" and calls == ["archived"]
