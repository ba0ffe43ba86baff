"""logger=mlflow against a real MLflow: the embedded SQLite store by default, and a tracking server started here
(`mlflow server`, stopped by its pid). Everything is read back with MlflowClient and compared with the run's own
records: params, every metric's history against metrics.csv, the artifacts, the status; across SIGTERM and
resume=auto, a server killed mid-run and started again, and a server that refuses with required=true."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, csv_histories, mlflow_histories

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow  # subprocesses, and a server

RUN = ["logger=mlflow", "data.train_size=20000", "model.hidden=[64]", "progress_bar=false"]
# MLflow's own settings, as a user sets them: a store that is away is told in seconds, not after minutes of retries
QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`mlflow server` on SQLite, on a free port: started, and stopped by its pid."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start in 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its session: the server and its workers
            self.process.wait()
        self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(tmp_path)
    started.start()
    yield started
    started.stop()


def _train(cwd: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *(["-m"] if "-m" in overrides else []), *RUN,
         *(override for override in overrides if override != "-m")],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **QUICK, **(env or {})},
    )  # fmt: skip


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def _runs(uri: str, experiment: str = "mlptrain") -> list:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _stopped_in_epoch_two(training: subprocess.Popen, run_dir: Path) -> str:
    """SIGTERM to `training` once run_dir's first last.ckpt is written, into the second epoch; its output."""
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.is_file() and training.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    training.send_signal(signal.SIGTERM)
    output = _finish(training)[1]
    assert "interrupted" in output, output[-3000:]
    return output


def test_the_embedded_store_holds_the_run_as_its_files_do(tmp_path: Path) -> None:
    status, output = _finish(_train(tmp_path, "trainer.max_epochs=2", "hydra.run.dir=run", "report.page=true"))
    assert status == 0, output[-3000:]
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED"
    assert mlflow_histories(uri, run.info.run_id) == csv_histories(tmp_path / "run")  # every value at its step, once
    params = run.data.params
    assert params["model.hidden"] == "[64]" and params["optimizer.lr"] == "0.001" and "training_path" in params
    assert run.data.tags["mlptrain.version.torch"] and run.data.tags["mlflow.runName"] == f"{tmp_path.name}/run"
    client = MlflowClient(tracking_uri=uri)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "report.md", "curves.png", "page"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "page")] == ["page/index.html"]
    assert (Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read_bytes()
            == (tmp_path / "run" / "summary.json").read_bytes())  # fmt: skip
    assert (tmp_path / "outputs" / "mlflow-artifacts").is_dir()  # beside the database, not ./mlruns
    assert not (tmp_path / "mlruns").exists()


def test_sigterm_and_resume_auto_continue_one_mlflow_run(tmp_path: Path, server: Server) -> None:
    settings = ["trainer.max_epochs=6", f"logger.mlflow.tracking_uri={server.uri}", "report.enabled=false"]
    straight = _train(tmp_path, *settings, "hydra.run.dir=straight", "logger.mlflow.experiment=straight")
    assert _finish(straight)[0] == 0
    output = _stopped_in_epoch_two(_train(tmp_path, *settings, "hydra.run.dir=stopped"), tmp_path / "stopped")
    (interrupted,) = _runs(server.uri)
    assert interrupted.info.status == "KILLED"
    status, output = _finish(_train(tmp_path, *settings, "hydra.run.dir=stopped", "resume=auto"))
    assert status == 0, output[-3000:]
    (resumed,) = _runs(server.uri)  # the same MLflow run, continued
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    histories = mlflow_histories(server.uri, resumed.info.run_id)
    assert histories == csv_histories(tmp_path / "stopped")  # no step twice, none missing
    (whole,) = _runs(server.uri, "straight")
    assert histories == mlflow_histories(server.uri, whole.info.run_id)  # as the run that was never stopped


def test_a_server_that_goes_away_costs_nothing_and_resume_auto_fills_it_in(tmp_path: Path, server: Server) -> None:
    settings = ["trainer.max_epochs=5", f"logger.mlflow.tracking_uri={server.uri}", "hydra.run.dir=run"]
    running = _train(tmp_path, *settings, "report.enabled=false")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    while not last.is_file() and running.poll() is None:
        time.sleep(0.05)
    server.stop()
    status, output = _finish(running)
    assert status == 0, output[-3000:]
    assert output.count("could not log the run's") == 1, output[-3000:]  # one warning
    assert '"status": "completed"' in (tmp_path / "run" / "summary.json").read_text()
    assert len(csv_histories(tmp_path / "run")["val/acc"]) == 5  # the local records whole
    server.start()
    status, output = _finish(_train(tmp_path, *settings, "report.enabled=false", "resume=auto"))
    assert status == 0 and "nothing to do" in output, output[-3000:]
    (run,) = _runs(server.uri)
    assert run.info.status == "FINISHED"
    assert mlflow_histories(server.uri, run.info.run_id) == csv_histories(tmp_path / "run")


def test_without_mlflow_installed_logger_mlflow_is_one_paragraph(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlptrain.errors import ConfigError
    from mlptrain.tracking import Store

    Store.installed()  # here it is installed
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as Python sees a package that cannot be imported
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[mlflow\]".*or use logger=csv'):
        Store.installed()


def test_a_refused_connection_with_required_stops_before_training(tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{_free_port()}"
    status, output = _finish(
        _train(tmp_path, f"logger.mlflow.tracking_uri={refused}", "logger.mlflow.required=true", "hydra.run.dir=run")
    )
    assert status == 1
    assert "logger.mlflow.required=true" in output and "Nothing was trained" in output and "Traceback" not in output
    assert not (tmp_path / "run" / "checkpoints").exists()
    status, output = _finish(_train(tmp_path, f"logger.mlflow.tracking_uri={refused}", "trainer.max_epochs=1",
                                    "report.enabled=false", "hydra.run.dir=warned"))  # fmt: skip
    assert status == 0 and output.count("could not start the MLflow run") == 1, output[-3000:]


def test_a_population_is_a_sweep_run_with_a_child_per_member_across_sigterm_and_resume(
    tmp_path: Path, server: Server
) -> None:
    sweep = ["-m", "hydra/launcher=population", "seed=1,2,3", "trainer.max_epochs=4", "report.enabled=false",
             f"logger.mlflow.tracking_uri={server.uri}", "hydra.sweep.dir=sweep"]  # fmt: skip
    output = _stopped_in_epoch_two(_train(tmp_path, *sweep), tmp_path / "sweep" / "0")
    before = {run.info.run_name: run for run in _runs(server.uri)}
    assert {run.info.status for run in before.values()} == {"KILLED"}, output[-3000:]
    status, output = _finish(_train(tmp_path, *sweep, "resume=auto"))
    assert status == 0 and "Population of 3 jobs" in output, output[-3000:]
    runs = _runs(server.uri)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.data.tags["mlptrain.run_dir"]: run for run in runs if run is not parent}
    assert len(runs) == 4 and {run.info.run_name: run.info.run_id for run in runs} == {
        name: run.info.run_id for name, run in before.items()
    }  # the same four MLflow runs, continued
    assert parent.info.status == "FINISHED" and parent.data.tags["mlptrain.jobs.completed"] == "3"
    artifacts = MlflowClient(tracking_uri=server.uri).list_artifacts(parent.info.run_id)
    assert "sweep_report.md" in {artifact.path for artifact in artifacts}
    for job in range(3):
        child = children[str(tmp_path / "sweep" / str(job))]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.info.end_time >= child.info.start_time
        assert child.data.params["seed"] == str(job + 1)
        member = tmp_path / "sweep" / str(job)
        assert mlflow_histories(server.uri, child.info.run_id) == csv_histories(member)  # every value once
