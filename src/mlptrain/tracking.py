"""logger=mlflow: a run's records in MLflow, derived from what its checkpoints and files hold.

By default the store is a SQLite database at outputs/mlflow.db, its artifacts in outputs/mlflow-artifacts/: an
embedded store that needs no server (`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db` browses it).
logger.mlflow.tracking_uri=http://host:5000 sends everything to a team's tracking server instead; credentials come
from MLflow's own environment variables (MLFLOW_TRACKING_USERNAME, ...), never from the config.

What goes in: the resolved config, flattened, and the training path as params; the versions and the git commit as
tags; every row of metrics.csv, each value at its row's step (the updates made), from the run's history, which its
checkpoints hold: each checkpoint logs the rows not yet in MLflow, and the run's end logs the test's row, the
artifacts (config.yaml, summary.json, report.md and its pictures, the page, best.ckpt when asked) and the status
(FINISHED, FAILED or KILLED, as summary.json says). What MLflow already holds is read back before anything is
logged, so no (metric, step) is logged twice. The MLflow run's id is kept in the checkpoints (`Tracking`'s
state), so a resumed run continues the same MLflow run, and a resume=auto of a run whose tracker was away fills
in what it missed.

The tracker never costs training: a store that is down or refuses is one warning, and the run goes on with its
local records (with logger.mlflow.required=true, a refusal at the start is a ConfigError before training). The
calls to the store are made by a thread of the Store's own, in order (Store.later), so that a slow or dead server
does not hold up training; the run's end waits for them (Store.wait).

A sweep (-m, any launcher; a population; an Optuna search, however many workers) is one parent MLflow run, found
by its folder (the tag mlptrain.sweep_key, under a lock in that folder, so that workers started together make one),
with a child run per job, member or trial (mlflow.parentRunId). The sweep's end (mlptrain.cli.SweepStatus) gives
the parent its report, its best job and its status; Optuna's trial number, parameters and state are tags of its
trial's child (`tag_run`). A population's members share one Store: one warning if it fails, for all of them."""

import contextlib
import csv
import fcntl
import hashlib
import importlib.util
import json
import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, partial
from pathlib import Path
from typing import Any

from mlptrain.errors import ConfigError
from mlptrain.rundir import flat, library_versions

log = logging.getLogger(__name__)

STATE_KEY = "Tracking"  # the key of mlptrain.callbacks.Tracking's state (the MLflow run's id) in a checkpoint
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
BATCH = 1000  # metrics in one log_batch call: MLflow's limit
PARAMS_BATCH = 100  # params in one call: MLflow's limit
PARAM_LENGTH = 6000  # the longest param value MLflow keeps
ARTIFACTS = ("config.yaml", "summary.json", "report.md")


def tracking_uri(configured: str | None) -> str:
    """The store: logger.mlflow.tracking_uri, or the embedded SQLite database at outputs/mlflow.db."""
    if configured:
        return configured
    return f"sqlite:///{(Path('outputs') / 'mlflow.db').resolve()}"


def _database(uri: str) -> Path | None:
    """The file of an embedded SQLite store's URI (sqlite:///path), or None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


class Store:
    """One MLflow tracking store, as this process uses it: the client, the experiment, and whether the store has
    failed (then every tracker on it stays quiet: one warning, however many runs log to it)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.uri = tracking_uri(settings.get("tracking_uri"))
        self.client: Any = None
        self.away = False  # the store failed once: no more calls in this process
        self.failure = ""
        self.experiment_id: str | None = None
        self.started = False  # a run was started on it (a refusal after that is a warning, whatever `required` says)
        self.parents: dict[Path, str | None] = {}  # sweep folders' runs, found or made
        self.thread: ThreadPoolExecutor | None = None

    @staticmethod
    def installed() -> None:
        """ConfigError where mlflow is not installed (found, not imported: importing it takes seconds, which the
        store's thread spends while training goes on)."""
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                'logger=mlflow records the run in MLflow, but mlflow is not installed: pip install -e ".[mlflow]" '
                "(or pip install mlflow), or use logger=csv."
            )

    def open(self) -> Any:
        """The MLflow client (called through `safely`: a store that cannot be opened is its one warning). Opening
        an embedded SQLite store makes or upgrades its tables: processes that open a new one at once (a sweep's
        workers) take turns, holding a lock beside it, or MLflow's migrations race and one fails."""
        if self.client is None:
            from mlflow.tracking import MlflowClient

            database = _database(self.uri)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
            with _locked(database.with_name(database.name + ".lock")) if database else contextlib.nullcontext():
                self.client = MlflowClient(tracking_uri=self.uri)
        return self.client

    def refused(self) -> ConfigError:
        return ConfigError(
            f"logger.mlflow.required=true, and the MLflow tracking store {self.uri} could not be used "
            f"({self.failure}). Nothing was trained. Start the server or fix the URI "
            "(logger.mlflow.tracking_uri=...), or set logger.mlflow.required=false to train with local records "
            "only and fill MLflow in later with resume=auto."
        )

    def experiment(self) -> str:
        """The experiment's id, created (its artifacts beside an embedded database) where it is not there yet."""
        if self.experiment_id is None:
            client, name = self.open(), self.settings["experiment"]
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                database = _database(self.uri)  # an embedded one: the artifacts beside it
                location = (database.parent / "mlflow-artifacts").as_uri() if database else None
                try:
                    self.experiment_id = client.create_experiment(name, artifact_location=location)
                except Exception:  # another process of the sweep created it first
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
            if experiment is not None:
                self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def find(self, tag: str, value: str) -> Any:
        """The oldest MLflow run of the experiment whose tag `tag` is `value`, or None."""
        found = self.open().search_runs(
            [self.experiment()], f"tags.`{tag}` = '{value}'", max_results=1, order_by=["attributes.start_time ASC"]
        )
        return found[0] if found else None

    def sweep_run(self, sweep_dir: Path, create: bool = True) -> str | None:
        """The id of the sweep's parent run: found by its folder, or (create) made, one for every process of the
        sweep (they look for it, and make it, holding a lock in its folder). None where there is none."""
        if sweep_dir in self.parents:
            return self.parents[sweep_dir]
        key = _key(sweep_dir)
        with _locked(sweep_dir / ".mlflow.lock") if create else contextlib.nullcontext():
            found = self.find("mlptrain.sweep_key", key)
            if found is not None:
                parent = found.info.run_id
            elif create:
                tags = {**_common_tags(sweep_dir), "mlptrain.sweep_key": key, "mlptrain.sweep_dir": str(sweep_dir)}
                parent = self.open().create_run(self.experiment(), tags=tags).info.run_id
            else:
                return None
        self.parents[sweep_dir] = parent
        return parent

    def later(self, what: str, call: Callable[[], Any]) -> "Future[bool]":
        """call() in the store's own thread, after every call handed to it before, through `safely`: training
        never waits for the store (a slow or dead server included)."""
        if self.thread is None:
            self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        return self.thread.submit(self.safely, what, call)

    def wait(self) -> None:
        """Every call handed to the store done (or skipped, the store away), and its thread ended (a later call
        starts another)."""
        if self.thread is not None:
            self.thread.shutdown(wait=True)
            self.thread = None

    def safely(self, what: str, call: Any) -> bool:
        """call(): its truth, or False where the store fails (one warning, and no more calls)."""
        if self.away:
            return False
        try:
            return bool(call())
        except Exception as error:  # the tracker's failure, whatever it is, never costs training
            self.away = True
            self.failure = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            if not self.settings.get("required") or self.started:
                log.warning(
                    "MLflow (%s) could not %s (%s). Training goes on, and its local records (metrics.csv, "
                    "summary.json, the checkpoints) are complete; once the store is back, the same command with "
                    "resume=auto logs what MLflow missed.",
                    self.uri, what, self.failure,
                )  # fmt: skip
            return False


class Tracker:
    """One run's MLflow run (a sweep's job or member: a child of the sweep's run, found or made in `sweep`):
    started (or continued) with `start`, filled in from its records with `log_rows` and `finish`. Every call to
    the store is made in the store's own thread (Store.later), in order, and goes through Store.safely: a failure
    is one warning, and the store then stays quiet for the rest of the process."""

    def __init__(self, store: Store, run_dir: Path, config: dict[str, Any]) -> None:
        self.store, self.run_dir, self.config = store, run_dir, config
        self.run_id: str | None = None
        self.begun: Future[bool] | None = None  # the start, where the store's thread makes it (else done)
        self.logged: set[tuple[str, int]] = set()  # (metric, step) pairs the MLflow run holds
        self.finished = False  # finish() was called: its records are final

    def start(self, run_id: str | None, path_why: str | None, sweep: Path | None = None) -> None:
        """Create the MLflow run (or continue `run_id`, a resumed run's) and log its params and tags. With
        logger.mlflow.required=true, the first run on a store is started here and now, and a refusal is a
        ConfigError; else in the store's thread, while training goes on."""
        self.store.installed()
        begin = partial(self._start, run_id, path_why, sweep)
        if self.store.settings.get("required") and not self.store.started:
            if not self.store.safely("start the MLflow run", begin):
                raise self.store.refused()
        else:
            self.begun = self.store.later("start the MLflow run", begin)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (under STATE_KEY): the MLflow run's id, once its start is done (None: the
        store failed), for resumed_run_id."""
        if self.begun is not None:
            self.begun.result()
        return {"run_id": self.run_id}

    def _start(self, run_id: str | None, path_why: str | None, sweep: Path | None) -> bool:
        client = self.store.open()
        if run_id is not None:
            self.run_id = client.get_run(run_id).info.run_id
            for key in _metric_keys(self._rows()):
                self.logged.update((key, metric.step) for metric in client.get_metric_history(run_id, key))
            client.update_run(run_id, status="RUNNING")
            self.store.started = True
            return True
        tags = _common_tags(self.run_dir)
        tags["mlptrain.run_key"] = _key(self.run_dir)
        tags["mlptrain.run_dir"] = str(self.run_dir.resolve())
        parent = self.store.sweep_run(sweep) if sweep is not None else None
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        self.run_id = client.create_run(self.store.experiment(), tags=tags).info.run_id
        self.store.started = True
        params = {key: _param(value) for key, value in flat(self.config).items() if not key.startswith("hydra.")}
        if path_why:
            params["training_path"] = _param(path_why)
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in sorted(params.items())]
        for start in range(0, len(items), PARAMS_BATCH):
            client.log_batch(self.run_id, params=items[start : start + PARAMS_BATCH])
        return True

    def log_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every value of `rows` (metrics.csv's, or the history they are written from: copied now) not yet in
        the MLflow run, logged in the store's thread."""
        rows = [dict(row) for row in rows]
        self.store.later("log the run's metrics", lambda: self._log(rows))

    def _log(self, rows: Sequence[dict[str, Any]]) -> bool:
        if self.run_id is None:
            return True
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = [
            (key, int(row["step"]), float(value))
            for row in rows
            for key, value in row.items()
            if key not in ("epoch", "step") and value not in (None, "") and (key, int(row["step"])) not in self.logged
        ]
        metrics = [Metric(key, value, now, step) for key, step, value in new]
        for start in range(0, len(metrics), BATCH):
            self.store.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])
        self.logged.update((key, step) for key, step, _ in new)
        return True

    def finish(self, wait: bool = True) -> None:
        """The run's records as its files have them at its end (metrics.csv, summary.json), its artifacts and its
        status, once (a second call only waits); with `wait`, done when this returns (else Store.wait)."""
        if not self.finished:
            self.finished = True
            self.store.later("log the run's records, artifacts and status", self._finish)
        if wait:
            self.store.wait()

    def _finish(self) -> bool:
        if self.run_id is None:
            return True
        self._log(self._rows())
        summary = _read_json(self.run_dir / "summary.json")
        status = STATUS.get(summary.get("status", ""), "FAILED")  # no summary.json: refused before training
        _log_artifacts(self.store.client, self.run_id, self.run_dir, self._artifacts(summary))
        from mlptrain.frameworks import end_mlflow_run

        end_mlflow_run(self.store.client, self.run_id, status)
        return True

    def _rows(self) -> list[dict[str, Any]]:
        file = self.run_dir / "metrics.csv"
        if not file.is_file():
            return []
        with file.open(newline="") as opened:
            return list(csv.DictReader(opened))

    def _artifacts(self, summary: dict[str, Any]) -> Iterable[Path]:
        from mlptrain.report import PICTURES

        names = [*ARTIFACTS, *(file for file, _ in PICTURES), "page/index.html"]
        if self.store.settings.get("log_checkpoints"):
            names.append("checkpoints/best.ckpt")
        return [self.run_dir / name for name in names if (self.run_dir / name).is_file()]


def current_sweep() -> Path | None:
    """The folder of the sweep (-m) this process's job belongs to, as Hydra set it; None for a run of its own."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(str(HydraConfig.get().sweep.dir)).resolve()


def tracked(
    config: dict[str, Any], run_dir: Path, checkpoint: dict[str, Any] | None, why: str | None, sweep: Path | None,
    store: Store | None = None,
) -> Tracker:  # fmt: skip
    """The Tracker of a run (config: its resolved config), its MLflow run started, or continued where its
    `checkpoint` (this run directory's own) names one; a child of the sweep's run where `sweep` is its folder."""
    tracker = Tracker(store or Store(config["logger"]["mlflow"]), run_dir, config)
    tracker.start(resumed_run_id(checkpoint), why, sweep)
    return tracker


def tag_run(run_dir: Path, tags: dict[str, Any]) -> None:
    """Set `tags` on the MLflow run of run_dir, where its config.yaml says logger=mlflow and MLflow holds one
    (Optuna's trial number, parameters and state on its trial's run); a store that fails is one warning."""
    settings = _mlflow_settings(run_dir)
    if settings is None:
        return
    store = Store(settings)

    def tag() -> bool:
        found = store.find("mlptrain.run_key", _key(run_dir))
        if found is not None:
            store.open().log_batch(found.info.run_id, tags=_tags(tags))
        return True

    store.safely(f"tag the MLflow run of {run_dir}", tag)


def finish_sweep(sweep_dir: Path, jobs: Sequence[Path]) -> None:
    """The sweep's parent run, where its jobs logged to MLflow: its report's files (sweep_report.md,
    sweep_jobs.csv, val_acc.png, an Optuna search's optimization_results.yaml) as artifacts, the jobs counted by
    status and the best job as tags, the best val/acc as a metric, and its status: RUNNING while a job still runs
    (another worker's), else KILLED when one was interrupted, FAILED when none completed, FINISHED otherwise."""
    from mlptrain.rundir import in_use

    settings = next((found for job in jobs if (found := _mlflow_settings(job)) is not None), None)
    if settings is None:
        return
    store = Store(settings)
    summaries = {job: _read_json(job / "summary.json") for job in jobs}
    statuses = {job: "running" if in_use(job) else summaries[job].get("status") or "refused" for job in jobs}
    completed = [job for job in jobs if statuses[job] == "completed"]
    best = max(completed, key=lambda job: summaries[job].get("best_val_acc") or 0.0, default=None)
    counts = Counter(statuses.values())
    every = set(counts)
    status = (
        "RUNNING" if "running" in every
        else "KILLED" if "interrupted" in every
        else "FAILED" if "completed" not in every
        else "FINISHED"
    )  # fmt: skip

    def finish() -> bool:
        parent = store.sweep_run(sweep_dir.resolve(), create=False)
        if parent is None:
            return True  # no job reached MLflow (resume=auto fills them in, and makes the sweep's run)
        client = store.open()
        own = {f"mlptrain.jobs.{name}": count for name, count in counts.items()}
        if best is not None:
            own["mlptrain.best_job"] = best.name
            client.log_metric(parent, "best_val_acc", float(summaries[best]["best_val_acc"]))
        results = _optuna_results(sweep_dir / "optimization_results.yaml")
        client.log_batch(parent, tags=_tags({**own, **results}))
        files = ("sweep_report.md", "sweep_jobs.csv", "val_acc.png", "optimization_results.yaml", "multirun.yaml")
        _log_artifacts(client, parent, sweep_dir, [sweep_dir / name for name in files if (sweep_dir / name).is_file()])
        if status == "RUNNING":
            client.update_run(parent, status="RUNNING")
        else:
            from mlptrain.frameworks import end_mlflow_run

            end_mlflow_run(client, parent, status)
        return True

    store.safely("log the sweep's MLflow run", finish)


def _optuna_results(path: Path) -> dict[str, Any]:
    """An Optuna search's optimization_results.yaml as the sweep run's tags (its storage left out: a database URL
    may hold a password)."""
    from mlptrain.rundir import stored_config

    if not path.is_file():
        return {}
    results = stored_config(path.parent, path.name) or {}
    tags = {f"optuna.{key}": results[key] for key in ("study_name", "best_trial", "best_value", "completed_trials")
            if key in results}  # fmt: skip
    tags.update({f"optuna.best_param.{key}": value for key, value in (results.get("best_params") or {}).items()})
    return tags


def resumed_run_id(checkpoint: dict[str, Any] | None) -> str | None:
    """The MLflow run a checkpoint's run logs to (None: none, or a checkpoint of a run without logger=mlflow)."""
    return ((checkpoint or {}).get("callbacks", {}).get(STATE_KEY) or {}).get("run_id")


def _key(folder: Path) -> str:
    """A folder as a tag value that finds its MLflow run: a digest of its absolute path (no quotes to escape)."""
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]


def _common_tags(folder: Path) -> dict[str, str]:
    tags = {f"mlptrain.version.{name}": version for name, version in library_versions().items()}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags["mlflow.runName"] = "/".join(folder.resolve().parts[-2:])  # <date>/<time>, or <sweep>/<job>
    return tags


def _tags(tags: dict[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(key, _param(value)) for key, value in tags.items()]


def _log_artifacts(client: Any, run_id: str, root: Path, paths: Sequence[Path]) -> None:
    """`paths` (below root) as the run's artifacts, laid out as below root: a call per file, as MLflow copies or
    uploads a folder's (a folder staged for one call cost a member 4 times more)."""
    for path in paths:
        folder = path.parent.relative_to(root).as_posix()
        client.log_artifact(run_id, str(path), None if folder == "." else folder)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """path's flock, held for the block: processes that would race (making a sweep's MLflow run, or an embedded
    store's tables) take turns."""
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _mlflow_settings(run_dir: Path) -> dict[str, Any] | None:
    """logger.mlflow of the run in run_dir, as its config.yaml records it, where it is enabled; else None."""
    from mlptrain.rundir import stored_config

    settings = ((stored_config(run_dir) or {}).get("logger") or {}).get("mlflow") or {}
    return settings if settings.get("enabled") else None


def _metric_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({key for row in rows for key in row if key not in ("epoch", "step")})


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text[:PARAM_LENGTH]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@cache  # the checkout of this process's mlptrain
def _git_commit() -> str | None:
    """The commit of the checkout mlptrain runs from, where it runs from one."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
