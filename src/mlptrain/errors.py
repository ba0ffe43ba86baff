"""The errors mlptrain reports to users as one paragraph instead of a traceback."""


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
