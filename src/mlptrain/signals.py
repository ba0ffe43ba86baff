"""When a command line takes SIGTERM, SIGINT and SIGUSR1: during training, where Lightning handles them, and
nowhere else.

A cluster sends these at any moment: SIGTERM to preempt a job, SIGUSR1 before its time limit, and a user
presses Ctrl-C. During training Lightning turns them into a checkpoint and an orderly stop (SIGTERM, SIGINT)
or a checkpoint and a requeue (SIGUSR1 under SLURM). Before training (reading the data, building the model)
and after it (the test, the report, the summary) a command line defers them instead: a handler notes them,
and none can cut a file in half, kill the job or end it with a traceback. One that arrived before training is
raised again as training starts, so Lightning handles it there; one that arrives after training waits until
the run has written everything, is logged, and the job exits 0: it is complete. Outside SLURM, SIGUSR1 means
nothing to a run and is only noted.

Handlers, not signal masks: a mask is each thread's own, and a signal the main thread blocks goes to any other
thread (torch's workers) that does not, which would die of it. A Python handler runs in the main thread,
whichever thread the signal reached. Only the command line installs these (cli.main, once, in the main thread);
the callback below switches them around training."""

import atexit
import logging
import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

DEFERRED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_pending: list[int] = []  # deferred signals, in the order they came
_previous: dict[int, Any] = {}  # the handlers hold() replaced, while a command line defers
_training = threading.Event()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _defer(signum: int, frame: FrameType | None) -> None:
    if not _training.is_set():  # in training, Lightning's own handler, called beside this one, has it
        _pending.append(signum)


def hold() -> None:
    """From here to the end of the process (a command line's), DEFERRED signals are noted outside training,
    and ignored once it exits (`_ignore_at_exit`). Called by cli.main and by the population launcher, in the
    main thread (elsewhere it does nothing)."""
    if _main_thread() and not _previous:
        for signum in DEFERRED:
            _previous[signum] = signal.signal(signum, _defer)
        atexit.unregister(_ignore_at_exit)  # once, however often a harness holds and lets go in one process
        atexit.register(_ignore_at_exit)


def _ignore_at_exit() -> None:
    """At the process's exit everything has been written: a signal then has nothing left to stop. CPython's
    finalization puts the default handlers back after the exit handlers have run, and a SIGTERM in the moments
    that remain would end a complete run with the signal's status (-15) instead of its own; ignored, it cannot."""
    if _previous and _main_thread():
        for signum in DEFERRED:
            signal.signal(signum, signal.SIG_IGN)


def drain() -> None:
    """After a run: log the signals that came after training, when the run had only its files left to write and
    wrote them, and forget them, so that the next run of a sweep starts clean."""
    for signum in _pending:
        log.info("%s arrived after training; what the run writes was written first", signal.Signals(signum).name)
    _pending.clear()


def holding() -> bool:
    """Whether hold() is in force in this process (a command line's, or a launcher's)."""
    return bool(_previous)


def let_go() -> None:
    """Undo hold(): for a harness that runs a command line inside its own, longer-lived process (the tests)."""
    drain()
    if _main_thread():
        for signum, handler in _previous.items():
            signal.signal(signum, handler)
        _previous.clear()


def _lightning_requeues() -> bool:
    """Whether Lightning handles SIGUSR1 (its SLURM environment, with the requeue it has by default)."""
    return SLURMEnvironment.detect()


class TrainingTakesSignals(Callback):
    """Hands the deferred signals to Lightning for training, and takes them back when it ends.

    Lightning's SLURM requeue saves a checkpoint inside its SIGUSR1 handler, which Python runs between any two
    bytecodes of the main thread: in the middle of a training step, where a population's parameters may be
    inside torch.func's transforms and cannot be saved. Here that handler runs at the end of the step in
    progress instead, as Lightning's SIGTERM stop does."""

    def __init__(self) -> None:
        self._requeue: Any = None  # Lightning's SIGUSR1 handler, while it is held back to the step's end
        self._requested = False

    def _ours(self) -> bool:
        return bool(_previous) and _main_thread()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its SLURM requeue handler for SIGUSR1 only where none is installed; it does so next.
        if self._ours() and _lightning_requeues():
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._ours():
            return
        _training.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops training, as Lightning expects
        if signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:  # not Lightning's: outside SLURM, only noted
            signal.signal(signal.SIGUSR1, _defer)
        else:  # Lightning's requeue: at the end of the step in progress (on_train_batch_end)
            self._requeue = signal.signal(signal.SIGUSR1, self._at_step_end)
        early, _pending[:] = list(_pending), []
        for signum in early:
            if signum != signal.SIGUSR1 or _lightning_requeues():
                signal.raise_signal(signum)  # to Lightning's handler now, as if it had come now

    def _at_step_end(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._requested:
            self._requested = False
            self._requeue(signal.SIGUSR1, None)

    def _end(self) -> None:
        if self._requested:  # after the last step: as one that comes after training
            self._requested = False
            _pending.append(signal.SIGUSR1)
        if self._ours():
            _training.clear()
            for signum in DEFERRED:  # Lightning puts back SIGTERM's; SIGUSR1's, after its teardown: on_fit_end
                if signum != signal.SIGTERM:
                    signal.signal(signum, _defer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._end()
