"""hparams_search=optuna: an Optuna search on Optuna's own ask-and-tell API, by any number of workers that share
one study.

    python train.py hparams_search=optuna hydra.sweeper.storage=search.journal hydra.sweeper.study_name=s

Every worker is that same command, on this machine or another that sees the storage: a journal file on a
shared filesystem (any path), or a database URL (anything with ://). Each worker asks the study for a trial,
trains it, tells the study its best val/acc, and asks again, until the study holds n_trials trials: n_trials
counts the study's trials, not the worker's. A trial's folder is <sweep dir>/<trial number>, so workers may share
one sweep dir.

A worker that dies mid-trial stops writing its heartbeat (a user attribute of the trial, every
heartbeat_interval seconds). Once it is older than grace_period, any worker marks the trial failed and, up to
max_retry times, puts it back in the study with the same parameters (study.enqueue_trial, its earlier tries in the
user attribute retry_of); the worker that takes it resumes it in the first try's folder (resume=auto), from its
last checkpoint. (Optuna's RetryFailedTrialCallback does the same through system attributes, and is deprecated
since Optuna 4.9.) Workers that find every
trial handed out wait while other workers' trials still run, to take over one whose worker dies.

With n_jobs > 1 a worker asks for that many trials at once and hands them to the launcher together: with
hydra/launcher=population, the trials that can be stacked train as one population.

Not hydra-optuna-sweeper: its release needs optuna < 3 (README, "Running on a cluster", says why). Optuna is
imported when a search starts, so that Hydra can find this plugin where Optuna is not installed.
"""

import logging
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat"  # the user attribute a running trial's worker refreshes: seconds since the epoch
RETRY_OF = "retry_of"  # the user attribute of a trial put back: the numbers of its earlier tries, the first first
WAIT = 5.0  # seconds a worker with nothing to ask waits before it looks at the study again
SURPLUS = "surplus"  # the user attribute of a trial asked for after the study's last one was taken: not run


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mlptrain_optuna.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sampler is made per trial, with its seed (OptunaSweeper._sampler)
    direction: str = "maximize"
    study_name: str = "mlptrain"
    storage: str | None = None  # None: in memory; a URL (with ://): a database; else a journal file's path
    n_trials: int = 20  # the study's trials, over all its workers
    n_jobs: int = 1  # trials a worker asks for at once and hands to its launcher together
    max_failure_rate: float = 1.0
    heartbeat_interval: float = 60.0  # seconds between a running trial's heartbeats
    grace_period: float = 180.0  # a running trial whose heartbeat is older has lost its worker
    max_retry: int = 2  # times a trial whose worker died is tried again (from its last checkpoint)
    sampler: Any = field(default_factory=dict)  # instantiated with seed + the trial's number, per trial
    params: Any = None  # the search space, in Hydra's override syntax


ConfigStore.instance().store(group="hydra/sweeper", name="mlptrain_optuna", node=OptunaSweeperConf, provider="mlptrain")


class Space:
    """The search space (sweep overrides: choice, range, interval, tag(log, interval)) as Optuna distributions,
    and the fixed overrides every trial gets."""

    def __init__(self, arguments: Sequence[str]) -> None:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.distributions: dict[str, Any] = {}
        self.prefixes: dict[str, str] = {}
        self.fixed: list[str] = []
        for override in OverridesParser.create().parse_overrides(list(arguments)):
            if not override.is_sweep_override():
                self.fixed.append(override.input_line)
                continue
            name = override.key_or_group + (f"@{override.package}" if override.package else "")
            self.prefixes[name] = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(override.type, "")
            value = override.value()
            if override.is_interval_sweep():
                log_scale = "log" in value.tags
                if isinstance(value.start, int) and isinstance(value.end, int):
                    self.distributions[name] = IntDistribution(value.start, value.end, log=log_scale)
                else:
                    self.distributions[name] = FloatDistribution(value.start, value.end, log=log_scale)
            elif override.is_range_sweep() and not value.shuffle and _ints(value.start, value.stop, value.step):
                last = value.start + (value.stop - 1 - value.start) // value.step * value.step  # range's last value
                self.distributions[name] = IntDistribution(value.start, last, step=value.step)
            else:  # choice, a shuffled or float range: its values
                self.distributions[name] = CategoricalDistribution(
                    list(override.sweep_iterator(transformer=Transformer.encode))
                )

    def overrides(self, trial: Any) -> list[str]:
        """The trial's overrides: a value for each searched key (drawn by the study's sampler), and the fixed."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        drawn = []
        for name, d in self.distributions.items():
            if isinstance(d, CategoricalDistribution):
                value = trial.suggest_categorical(name, d.choices)
            elif isinstance(d, FloatDistribution):
                value = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
            else:
                value = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
            drawn.append(f"{self.prefixes[name]}{name}={value}")
        return [*drawn, *self.fixed]


def _ints(*values: Any) -> bool:
    return all(isinstance(value, int) for value in values)


def open_storage(storage: str | None) -> Any:
    """The study's storage: None in memory, a database URL, or a journal file (created with its folder).
    ConfigError (one paragraph) for a database whose driver is missing, or a journal that cannot be written."""
    from mlptrain.errors import ConfigError

    try:
        return _open_storage(storage)
    except ImportError as error:  # Optuna's own message chains the driver's ModuleNotFoundError
        driver = getattr(error.__cause__, "name", None) or "its driver"
        raise ConfigError(
            f"hydra.sweeper.storage={storage} names a database whose Python driver ({driver}) is not installed, "
            f"so the study cannot open it. Install it (pip install {driver}, for this URL's database), use a "
            "SQLite database (sqlite:///search.db), or a journal file (hydra.sweeper.storage=search.journal) "
            "that every worker can reach."
        ) from None
    except OSError as error:
        raise ConfigError(
            f"hydra.sweeper.storage={storage}: the study's journal file cannot be written there "
            f"({error.strerror}: {error.filename}). Give a path in a folder you can write to, one that every "
            "worker of the search can reach (a shared filesystem for several machines)."
        ) from None


def _open_storage(storage: str | None) -> Any:
    import optuna
    import sqlalchemy.exc

    if storage is None:
        return None
    if "://" in storage:
        # SQLite: wait for another worker's write (a minute) rather than fail with "database is locked".
        engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(storage, engine_kwargs=engine)
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
                # Workers started together race to create the tables and stamp their version ("table ... already
                # exists", "UNIQUE constraint failed: alembic_version"): the losers find them made.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))


class Heartbeat:
    """A thread that refreshes the heartbeat of the trials this worker runs, every `interval` seconds."""

    def __init__(self, trials: Sequence[Any], interval: float) -> None:
        self.trials, self.interval = list(trials), interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="optuna heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            for trial in self.trials:
                try:
                    trial.set_user_attr(HEARTBEAT, time.time())
                except Exception as error:  # a finished trial, or storage that blinked: the next beat tries again
                    log.debug("heartbeat of trial %d: %s", trial.number, error)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = OptunaSweeperConf(**settings)
        if not 0.0 <= self.settings.max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={self.settings.max_failure_rate}: give 0 to 1.")
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from mlptrain.errors import MlptrainError
        from mlptrain.frameworks import use_sampler
        from mlptrain.rundir import run_status

        s = self.settings
        space = Space([*(f"{key}={value}" for key, value in (s.params or {}).items()), *arguments])
        try:
            storage = open_storage(s.storage)
        except MlptrainError as error:  # as a run's mistake is told: one paragraph, exit status 1
            log.error("%s", error)
            sys.exit(1)
        study = optuna.create_study(
            study_name=s.study_name,
            storage=storage,
            sampler=self._sampler(0),
            direction=s.direction,
            load_if_exists=True,
        )
        log.info(f"Study {study.study_name} in {s.storage or 'memory'}: {s.n_trials} trials, {s.direction}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        ran = failed = 0
        while True:
            trials = self._ask(study)
            if trials is None:
                break
            if not trials:  # every trial handed out, others still running: wait to take over a dead worker's
                time.sleep(min(s.heartbeat_interval, WAIT))
                continue
            folders = {}
            jobs = []
            for trial in trials:
                use_sampler(study, self._sampler(trial.number))  # its own draws: no worker repeats another's
                overrides = space.overrides(trial)
                tries = _tries(study, trial.number)
                folders[trial.number] = tries[0] if tries else trial.number
                jobs.append((trial, [*overrides, "resume=auto"] if tries else overrides))
            with Heartbeat(trials, s.heartbeat_interval):
                returns = []
                for group in _runs(jobs, folders):
                    first_folder = folders[group[0][0].number]
                    returns += self.launcher.launch([job for _, job in group], initial_job_idx=first_folder)
            stop = False
            for (trial, _), result in zip(jobs, returns):
                value = _value(result, trial.number)
                status = run_status(sweep_dir / str(folders[trial.number]))
                ran += 1
                if status == "interrupted":  # a signal stopped it: another worker (or this one, requeued) resumes it
                    log.info(f"Trial {trial.number} was interrupted; it is put back in the study to be resumed")
                    self._fail(study, trial.number, retry=True)
                    stop = True
                elif value is None or not math.isfinite(value):
                    failed += 1
                    self._fail(study, trial.number, retry=False)
                else:
                    _tell(study, trial.number, value)
                _tag_trial(study, trial.number, sweep_dir / str(folders[trial.number]))
            if stop:
                break
            if ran and failed / ran > s.max_failure_rate:
                raise RuntimeError(
                    f"{failed} of this worker's {ran} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{s.max_failure_rate}: see their summary.json files in {sweep_dir}."
                )
        self._write_results(study, sweep_dir)

    def _sampler(self, number: int) -> Any:
        """The sampler for trial `number`: conf's, seeded with its seed + number (the same trials when the search
        runs again; different draws on each worker)."""
        sampler = OmegaConf.to_container(OmegaConf.create(self.settings.sampler))
        if "seed" in sampler and sampler["seed"] is not None:
            sampler["seed"] = int(sampler["seed"]) + number
        return instantiate(sampler)

    def _ask(self, study: Any) -> list[Any] | None:
        """Up to n_jobs trials for this worker: trials put back, and new ones while the study has fewer than
        n_trials that count. [] when none is left but other workers' are running; None when done."""
        from optuna.trial import TrialState

        self._fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        free = min(self.settings.n_jobs, waiting + max(0, self.settings.n_trials - len(_counted(trials))))
        if free == 0:
            return [] if any(t.state == TrialState.RUNNING for t in trials) else None
        asked = []
        for _ in range(free):
            trial = study.ask()
            trial.set_user_attr(HEARTBEAT, time.time())
            before = [t for t in _counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
            if len(before) >= self.settings.n_trials:  # another worker took the last one meanwhile
                log.info(f"Trial {trial.number} not run: the study's {self.settings.n_trials} trials are taken")
                trial.set_user_attr(SURPLUS, True)
                study.tell(trial.number, state=TrialState.FAIL)
                continue
            asked.append(trial)
        return asked

    def _fail_stale(self, study: Any) -> None:
        """Fail the running trials whose heartbeat is older than grace_period (their worker died), and put each
        back in the study to be tried again (up to max_retry times)."""
        from optuna.trial import TrialState

        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.user_attrs.get(HEARTBEAT, trial.datetime_start.timestamp())
            if now - beat > self.settings.grace_period:
                log.info(f"Trial {trial.number}: no heartbeat for {now - beat:.0f} s, its worker is gone")
                self._fail(study, trial.number, retry=True)

    def _fail(self, study: Any, number: int, retry: bool) -> None:
        import optuna
        from optuna.trial import TrialState

        try:
            study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return  # finished meanwhile (another worker failed it first, and put it back)
        if not retry:
            return
        frozen = _frozen(study, number)
        tries = [*frozen.user_attrs.get(RETRY_OF, ()), number]
        if len(tries) > self.settings.max_retry:
            log.info(f"Trial {tries[0]} was tried {len(tries)} times (max_retry={self.settings.max_retry}): not again")
            return
        study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: tries})

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            log.warning(f"No trial of study {study.study_name} has completed: no optimization_results.yaml")
            return
        best = study.best_trial
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.settings.storage,
            "best_trial": best.number,
            "best_params": best.params,
            "best_value": best.value,
            "completed_trials": len(done),
        }
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info(f"Best trial {best.number}: value {best.value}, parameters {best.params}")


def _counted(trials: Sequence[Any]) -> list[Any]:
    """The trials that count towards n_trials: all but those not run (surplus) and those tried again (a retry,
    waiting, running or finished, stands for the tries it lists in retry_of)."""
    replaced = {number for t in trials for number in t.user_attrs.get(RETRY_OF, ())}
    return [t for t in trials if not t.user_attrs.get(SURPLUS) and t.number not in replaced]


def _frozen(study: Any, number: int) -> Any:
    """Trial `number` of the study, as its storage holds it now (Optuna's FrozenTrial)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _tries(study: Any, number: int) -> list[int]:
    """The numbers of the earlier tries of trial `number` (put back after its worker died), the first first."""
    frozen = _frozen(study, number)
    return list(frozen.user_attrs.get(RETRY_OF, ()))


def _tag_trial(study: Any, number: int, run_dir: Path) -> None:
    """logger=mlflow: the trial's number, parameters, state and value as tags of its folder's MLflow run (a trial
    put back continues the first try's run, in its folder: its tags then name the last try, and retry_of the rest)."""
    from mlptrain.tracking import tag_run

    frozen = _frozen(study, number)
    tags = {"optuna.study_name": study.study_name, "optuna.trial_number": number, "optuna.state": frozen.state.name}
    tags.update({f"optuna.param.{name}": value for name, value in frozen.params.items()})
    if frozen.value is not None:
        tags["optuna.value"] = frozen.value
    if frozen.user_attrs.get(RETRY_OF):
        tags["optuna.retry_of"] = list(frozen.user_attrs[RETRY_OF])
    tag_run(run_dir, tags)


def _runs(jobs: list[tuple[Any, list[str]]], folders: dict[int, int]) -> list[list[tuple[Any, list[str]]]]:
    """The jobs in groups the launcher takes at once: runs of consecutive folder numbers (a launcher numbers the
    jobs of a call from its first)."""
    groups: list[list[tuple[Any, list[str]]]] = []
    for job in jobs:
        folder = folders[job[0].number]
        if groups and folders[groups[-1][-1][0].number] == folder - 1:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _value(result: Any, number: int) -> float | None:
    """The trial's best val/acc; None where it failed. A job that raised (not a mistake its run told in one
    paragraph: a bug) has its traceback logged, as Hydra's own sweeper shows it, and the search goes on."""
    from hydra.core.utils import JobStatus

    if result.status == JobStatus.FAILED:
        try:
            _ = result.return_value  # Hydra's way to a failed job's exception: it raises it
        except Exception as error:
            log.error(f"Trial {number} raised {type(error).__name__}: {error}", exc_info=error)
        return None
    if result.status != JobStatus.COMPLETED or result.return_value is None:
        return None
    return float(result.return_value)


def _tell(study: Any, number: int, value: float) -> None:
    try:
        study.tell(number, value)
    except ValueError as error:  # failed by another worker that took its heartbeat for dead
        log.warning(f"Trial {number}'s result {value} not told: {error}")
