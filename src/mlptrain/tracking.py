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
local records (with logger.mlflow.required=true, a refusal at the start is a ConfigError before training)."""

import csv
import json
import logging
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mlptrain.errors import ConfigError
from mlptrain.rundir import flat, library_versions

log = logging.getLogger(__name__)

STATE_KEY = "Tracking"  # the callbacks' key its state (the MLflow run's id) has in a checkpoint
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


class Tracker:
    """One run's MLflow run: started (or continued) with `start`, filled in from its records with `log_rows`
    and `finish`. Every call to the store goes through `_safely`: a failure is one warning, and the tracker then
    stays quiet for the rest of the process."""

    def __init__(self, settings: dict[str, Any], run_dir: Path, config: dict[str, Any]) -> None:
        self.settings, self.run_dir, self.config = settings, run_dir, config
        self.uri = tracking_uri(settings.get("tracking_uri"))
        self.run_id: str | None = None
        self.client: Any = None
        self.away = False  # the store failed once: no more calls in this process
        self.logged: set[tuple[str, int]] = set()  # (metric, step) pairs the MLflow run holds

    def start(self, run_id: str | None, path_why: str | None) -> None:
        """Create the MLflow run (or continue `run_id`, a resumed run's) and log its params and tags."""
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise ConfigError(
                'logger=mlflow records the run in MLflow, but mlflow is not installed: pip install -e ".[mlflow]" '
                "(or pip install mlflow), or use logger=csv."
            ) from error
        self.client = MlflowClient(tracking_uri=self.uri)
        started = self._safely("start the MLflow run", lambda: self._start(run_id, path_why))
        if not started and self.settings.get("required"):
            raise ConfigError(
                f"logger.mlflow.required=true, and the MLflow tracking store {self.uri} could not be used "
                f"({self.failure}). Nothing was trained. Start the server or fix the URI "
                "(logger.mlflow.tracking_uri=...), or set logger.mlflow.required=false to train with local records "
                "only and fill MLflow in later with resume=auto."
            )

    def _start(self, run_id: str | None, path_why: str | None) -> bool:
        client = self.client
        if run_id is not None:
            self.run_id = client.get_run(run_id).info.run_id
            for key in _metric_keys(self._rows()):
                self.logged.update((key, metric.step) for metric in client.get_metric_history(run_id, key))
            client.update_run(run_id, status="RUNNING")
            return True
        experiment = client.get_experiment_by_name(self.settings["experiment"])
        if experiment is None:
            location = None
            if self.uri.startswith("sqlite:"):  # artifacts beside the embedded database
                location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").as_uri()
            experiment_id = client.create_experiment(self.settings["experiment"], artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        tags = {f"mlptrain.version.{name}": version for name, version in library_versions().items()}
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        tags["mlflow.runName"] = "/".join(self.run_dir.resolve().parts[-2:])  # <date>/<time>, or <sweep>/<job>
        tags["mlptrain.run_dir"] = str(self.run_dir.resolve())
        self.run_id = client.create_run(experiment_id, tags=tags).info.run_id
        params = {key: _param(value) for key, value in flat(self.config).items() if not key.startswith("hydra.")}
        if path_why:
            params["training_path"] = _param(path_why)
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in sorted(params.items())]
        for start in range(0, len(items), PARAMS_BATCH):
            client.log_batch(self.run_id, params=items[start : start + PARAMS_BATCH])
        return True

    def log_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every value of `rows` (metrics.csv's, or the history they are written from) not yet in the MLflow run."""
        if self.run_id is None or self.away:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = [
            (key, int(row["step"]), float(value))
            for row in rows
            for key, value in row.items()
            if key not in ("epoch", "step") and value not in (None, "") and (key, int(row["step"])) not in self.logged
        ]
        metrics = [Metric(key, value, now, step) for key, step, value in new]

        def log() -> bool:
            for start in range(0, len(metrics), BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])
            return True

        if metrics and self._safely("log the run's metrics", log):
            self.logged.update((key, step) for key, step, _ in new)

    def finish(self) -> None:
        """The run's records as its files have them at its end (metrics.csv, summary.json), its artifacts and
        its status."""
        if self.run_id is None or self.away:
            return
        self.log_rows(self._rows())
        summary = _read_json(self.run_dir / "summary.json")
        status = STATUS.get(summary.get("status", ""), "FINISHED")

        def finish() -> bool:
            for path in self._artifacts(summary):
                folder = path.parent.relative_to(self.run_dir).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
            self.client.set_terminated(self.run_id, status=status)
            return True

        self._safely("log the run's artifacts and status", finish)

    def _rows(self) -> list[dict[str, Any]]:
        file = self.run_dir / "metrics.csv"
        if not file.is_file():
            return []
        with file.open(newline="") as opened:
            return list(csv.DictReader(opened))

    def _artifacts(self, summary: dict[str, Any]) -> Iterable[Path]:
        from mlptrain.report import PICTURES

        names = [*ARTIFACTS, *(file for file, _ in PICTURES), "page/index.html"]
        if self.settings.get("log_checkpoints"):
            names.append("checkpoints/best.ckpt")
        return [self.run_dir / name for name in names if (self.run_dir / name).is_file()]

    def _safely(self, what: str, call: Any) -> bool:
        if self.away:
            return False
        try:
            return bool(call())
        except Exception as error:  # the tracker's failure, whatever it is, never costs training
            self.away = True
            self.failure = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            if not self.settings.get("required") or self.run_id is not None:
                log.warning(
                    "MLflow (%s) could not %s (%s). Training goes on, and its local records (metrics.csv, "
                    "summary.json, the checkpoints) are complete; once the store is back, the same command with "
                    "resume=auto logs what MLflow missed.",
                    self.uri, what, self.failure,
                )  # fmt: skip
            return False


class Tracking(Callback):
    """Logs the rows of the run's history not yet in MLflow whenever a checkpoint is saved, and keeps the MLflow
    run's id in the checkpoint (its state), for a resume to continue it."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.tracker.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # read before training starts (resumed_run_id), so that the run is continued before it trains

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.tracker.log_rows(pl_module.history)


def resumed_run_id(checkpoint: dict[str, Any] | None) -> str | None:
    """The MLflow run a checkpoint's run logs to (None: none, or a checkpoint of a run without logger=mlflow)."""
    return ((checkpoint or {}).get("callbacks", {}).get(STATE_KEY) or {}).get("run_id")


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


def _git_commit() -> str | None:
    """The commit of the checkout mlptrain runs from, where it runs from one."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
