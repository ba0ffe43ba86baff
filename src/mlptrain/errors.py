"""The errors mlptrain reports to users as one paragraph instead of a traceback."""

import sys
from collections.abc import Callable


class MlptrainError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(MlptrainError, ValueError):
    """A config value that cannot work (unknown name, out-of-range number, bad combination)."""


class DataError(MlptrainError):
    """MNIST files that are missing, corrupt or could not be downloaded."""


class NonFiniteLossError(MlptrainError, ArithmeticError):
    """The training loss became NaN or infinite."""


class RunInterrupted(MlptrainError):
    """Training was stopped by Ctrl-C or SIGTERM; what was written is kept."""

    def __init__(self, message: object, epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch  # where it stopped: for a caller that says its own way to go on (mlptrain.runs)


class CheckpointError(MlptrainError):
    """A checkpoint that is missing, truncated, not mlptrain's, or would run code if it were loaded."""

    def __init__(self, message: object, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # what is wrong with the file, in a few words, for a log line


class RunDirError(MlptrainError):
    """A run directory that cannot be written: its permissions, a read-only filesystem, a full disk."""


def run_script(run: Callable[[list[str]], None]) -> None:
    """A plain script's body (scripts/predict.py, scripts/export.py): run(its key=value arguments), a user's
    mistake as one line `error: ...` on stderr and exit status 1."""
    try:
        run(sys.argv[1:])
    except MlptrainError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
