"""SIGKILLs at many points of a run, inside its writes too: after each, the same command with resume=auto, and in
the end the weights, metrics.csv and results of a run that went through (tests/test_faults.py's other faults)."""

import itertools
import random
import re
import signal
import time
from pathlib import Path

import pytest

from mlptrain.rundir import LOCK_FILE
from tests.test_faults import finish, same_as, start, went_through

pytestmark = pytest.mark.slow  # subprocesses

# Half of them at moments spread over a run, half inside a write: every kind of write is cut at least once (the
# last assertion), 3 are preemptions. Each costs a process start (seconds), so this is the suite's longest test;
# 12 (20 until 2026-12-03) keep every kind of kill while it fits beside the rest of the slow tier.
KILLS = 12


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    return went_through(tmp_path_factory)


def test_sigkill_at_many_points_then_resume_auto_equals_a_run_that_went_through(
    straight: tuple[Path, float], tmp_path: Path
) -> None:
    """KILLS SIGKILLs, each followed by the same command with resume=auto, until they are spent: at moments spread
    over a run (start-up, training, checkpoints, the test), a quarter of them a preemption whose SIGKILL follows
    its SIGTERM within a tenth of a second (often inside the checkpoint the SIGTERM writes), and every other one
    inside a write, half of it on disk. A run that completes before they are spent is compared, and the rest go
    to a fresh one."""
    reference, seconds = straight
    runs = [tmp_path / "killed-0"]
    killed: list[str] = []
    moments = random.Random(0)
    # The n-th write of an attempt, as the run goes on, and the first write of each file that must be cut once
    # (by its name: which write number it is depends on where the attempt resumed).
    writes = itertools.cycle(["best.ckpt", 2, "metrics.csv", 3, "last.ckpt", 1, 4, 5, 6, 7, 8])
    for attempt in itertools.count():
        assert attempt < 4 * KILLS, killed
        if attempt % 2:
            status, output = finish(
                start(runs[-1], str(next(writes)), "resume=auto", script="tests/killed_at_write.py")
            )
        else:
            process = start(runs[-1], "resume=auto")
            time.sleep(seconds * (0.15 + 0.75 * moments.random()))
            if attempt % 8 == 6:
                process.send_signal(signal.SIGTERM)
                time.sleep(0.1 * moments.random())
            process.kill()
            status, output = finish(process)
        assert "Traceback" not in output, output[-3000:]
        if status == -signal.SIGKILL:
            where = re.search(r"killed while writing (\S+)", output)
            killed.append(where.group(1) if where else f"at {attempt}")
            if len(killed) == KILLS:
                break
        elif status == 0:  # completed before the next kill
            same_as(runs[-1], reference)
            runs.append(tmp_path / f"killed-{len(runs)}")
    assert {"metrics.csv", "best.ckpt", "last.ckpt"} <= set(killed), killed  # each kind of write, cut in half
    status, output = finish(start(runs[-1], "resume=auto"))
    assert status == 0, output[-3000:]
    for run in runs:
        same_as(run, reference)
        leftovers = [path.name for path in run.rglob("*") if ".tmp-" in path.name or path.name.endswith(".damaged")]
        assert not leftovers  # every write was whole or not there: no checkpoint ever needed setting aside
        assert (run / LOCK_FILE).read_text() == ""
