"""python tests/killed_at_write.py WHICH OVERRIDES...: `python train.py OVERRIDES...`, which SIGKILLs itself in
the middle of a durable write (a checkpoint, metrics.csv, config.yaml or summary.json), half the bytes written:
what a kill or a full disk does to a write in progress. WHICH is a number N (its N-th write) or a file's name
(its first write of that file: best.ckpt, say, whenever the run comes to it). tests/test_sigkill.py runs it."""

import io
import os
import runpy
import signal
import sys
from pathlib import Path

from mlptrain import rundir

ROOT = Path(__file__).resolve().parents[1]
which = sys.argv.pop(1)
writes = 0
write_durably = rundir.write_durably


def dying_write(path: Path, write: object) -> None:
    global writes
    writes += 1
    if str(writes) != which and Path(path).name != which:
        return write_durably(path, write)

    def half_then_kill(file: io.BufferedIOBase) -> None:
        whole = io.BytesIO()
        write(whole)
        file.write(whole.getvalue()[: len(whole.getvalue()) // 2])
        file.flush()
        print(f"killed while writing {Path(path).name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    return write_durably(path, half_then_kill)


rundir.write_durably = dying_write
sys.argv[0] = str(ROOT / "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
