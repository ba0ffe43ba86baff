"""Optuna searches by several workers on one study (hparams_search=optuna, hydra_plugins/mlptrain_optuna): worker
processes started as a user starts them, sharing a journal file or a SQLite database, and one killed mid-trial."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import ROOT, csv_histories, mlflow_histories, run_in_process

TINY = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=20", "report.enabled=false"]


def worker(storage: str, sweep: Path, *extra: str) -> subprocess.Popen:
    """One worker: the command every worker of the search runs, on any machine that sees the storage."""
    command = [
        sys.executable, "train.py", "hparams_search=optuna", f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared", "optimizer.lr=tag(log,interval(0.001,0.1))", *TINY, *extra,
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, ends: int = 0) -> str:
    """The worker's output, once it has ended with exit status `ends` and no traceback."""
    output, _ = process.communicate(timeout=600)
    assert process.returncode == ends, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return output


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    if "://" not in storage:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    return optuna.load_study(study_name="shared", storage=storage).get_trials()


def test_the_search_space_is_hydras_override_syntax_as_optuna_distributions() -> None:
    from hydra_plugins.mlptrain_optuna.optuna_sweeper import Space

    space = Space(
        [
            "optimizer.lr=tag(log,interval(0.001,0.1))", "model.dropout=interval(0,0.5)", "seed=range(1,10,3)",
            "model.activation=choice(relu,tanh)", "+trainer.gradient_clip_val=choice(0.5,1.0)", "optimizer=sgd",
        ]
    )  # fmt: skip
    d = space.distributions
    assert d["optimizer.lr"] == optuna.distributions.FloatDistribution(0.001, 0.1, log=True)
    assert d["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert d["seed"] == optuna.distributions.IntDistribution(1, 7, step=3)  # range(1,10,3): 1, 4, 7
    assert d["model.activation"] == optuna.distributions.CategoricalDistribution(["relu", "tanh"])
    trial = optuna.trial.FixedTrial(
        {"optimizer.lr": 0.01, "model.dropout": 0.25, "seed": 4, "model.activation": "tanh",
         "trainer.gradient_clip_val": 1.0}
    )  # fmt: skip
    assert space.overrides(trial) == [
        "optimizer.lr=0.01", "model.dropout=0.25", "seed=4", "model.activation=tanh",
        "+trainer.gradient_clip_val=1.0", "optimizer=sgd",
    ]  # fmt: skip


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study_and_run_its_trials_once(kind: str, tmp_path: Path) -> None:
    storage = str(tmp_path / "search.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'search.db'}"
    sweep = tmp_path / "sweep"  # one sweep dir for both: a trial's folder is its number
    # The SQLite one logs to MLflow too (an embedded store both workers share): the search is a parent MLflow run,
    # with a child per trial, made once however the workers race.
    tracked = ["logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"] * (kind == "sqlite")
    workers = [worker(storage, sweep, "hydra.sweeper.n_trials=6", *tracked) for _ in range(2)]
    outputs = [finish(process) for process in workers]
    study = trials(storage)
    done = [t for t in study if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6, [(t.number, t.state) for t in study]
    assert all(t.user_attrs.get("surplus") for t in study if t not in done)  # at most a race's leftover, not run
    assert len({t.params["optimizer.lr"] for t in done}) == 6  # none twice
    assert all("Study shared" in output for output in outputs)
    for t in done:  # each trial's run, in the folder of its number, told its own best val/acc
        summary = json.loads((sweep / str(t.number) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["best_val_acc"] == pytest.approx(t.value)
        assert (
            f"optimizer.lr={t.params['optimizer.lr']}"
            in (sweep / str(t.number) / ".hydra" / "overrides.yaml").read_text()
        )
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(done, key=lambda t: t.value)
    assert results["best_value"] == pytest.approx(best.value) and results["best_trial"] == best.number
    assert results["completed_trials"] == 6
    if kind == "journal":
        assert watched(storage) == ["shared"]
    else:
        trials_in_mlflow(tmp_path / "mlflow.db", sweep, done, best)


def trials_in_mlflow(store: Path, sweep: Path, done: list[Any], best: Any) -> None:
    """The search in MLflow: one parent run (the sweep's, with the study's best trial), one child per trial,
    tagged with its number, parameters, state and value, and holding its metrics.csv's values once each."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("mlptrain").experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.best_trial"] == str(best.number)
    assert parent.data.tags["mlptrain.jobs.completed"] == "6"
    children = {int(run.data.tags["optuna.trial_number"]): run for run in runs if run is not parent}
    assert len(runs) == 7 and sorted(children) == sorted(t.number for t in done)  # one child per trial, none twice
    for t in done:
        child = children[t.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["mlptrain.run_dir"] == str(sweep / str(t.number))
        assert child.data.tags["optuna.state"] == "COMPLETE" and float(child.data.tags["optuna.value"]) == t.value
        assert float(child.data.tags["optuna.param.optimizer.lr"]) == t.params["optimizer.lr"]
        assert mlflow_histories(uri, child.info.run_id) == csv_histories(sweep / str(t.number))  # each step once


def watched(storage: str) -> list[str]:
    """The studies optuna-dashboard shows for `storage` (README: how to watch a study), from its web API."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = subprocess.Popen(
        ["optuna-dashboard", storage, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    return [study["study_name"] for study in json.loads(answer.read())["study_summaries"]]
            except OSError:
                assert time.monotonic() < deadline and dashboard.poll() is None
                time.sleep(0.2)
    finally:
        dashboard.kill()
        dashboard.wait()


@pytest.mark.slow
def test_a_killed_workers_trial_fails_and_another_worker_resumes_it(tmp_path: Path) -> None:
    """SIGKILL a worker mid-trial: its heartbeat stops, and the other worker, once the grace period is over,
    marks the trial failed, and (max_retry) takes its retry, which goes on in the killed trial's folder."""
    storage, sweep = str(tmp_path / "search.journal"), tmp_path / "sweep"
    quick = ["hydra.sweeper.n_trials=2", "hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=2"]
    longer = ["data.train_size=5000", "trainer.limit_train_batches=null"]  # a few seconds: killed in the middle
    first = worker(storage, sweep, *quick, *longer)
    started = sweep / "0" / "config.yaml"
    deadline = time.monotonic() + 120
    while not started.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (sweep / "0" / "summary.json").exists() or "running" in (sweep / "0" / "summary.json").read_text()
    output = finish(worker(storage, sweep, *quick, *longer))
    assert "Trial 0: no heartbeat" in output
    study = {t.number: t for t in trials(storage)}
    assert study[0].state == optuna.trial.TrialState.FAIL
    retry = next(t for t in study.values() if t.user_attrs.get("retry_of") == [0])
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == study[0].params
    (other,) = [t for t in study.values() if t.state == optuna.trial.TrialState.COMPLETE and t is not retry]
    assert len(study) == 3  # the n_trials=2: the retry stands for trial 0
    summary = json.loads((sweep / "0" / "summary.json").read_text())  # the retry, in the first try's folder
    assert summary["status"] == "completed" and summary["best_val_acc"] == pytest.approx(retry.value)
    assert not (sweep / str(retry.number)).exists()
    assert json.loads((sweep / str(other.number) / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_puts_its_trial_back_and_another_resumes_it(tmp_path: Path) -> None:
    """A preemption's SIGTERM mid-trial: the run writes its checkpoint and stops, the worker puts the trial back
    at once and ends; the next worker resumes it from that checkpoint, in the same folder."""
    storage, sweep = str(tmp_path / "search.journal"), tmp_path / "sweep"
    longer = [
        "hydra.sweeper.n_trials=1",
        "data.train_size=5000",
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=3",
    ]
    first = worker(storage, sweep, *longer)
    checkpoint = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    output = finish(first, ends=1)  # none of its trials completed: as an interrupted run ends
    assert "Trial 0 was interrupted; it is put back in the study" in output
    assert "No job of the sweep completed (of 1: 1 interrupted)" in output
    output = finish(worker(storage, sweep, *longer))
    assert "resume=auto: resuming from" in output, output[-3000:]
    study = trials(storage)
    assert [t.state for t in study] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study[1].user_attrs["retry_of"] == [0] and study[1].params == study[0].params
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3


@pytest.mark.slow  # processes
def test_workers_that_open_a_new_database_at_the_same_instant_all_get_it(tmp_path: Path) -> None:
    """Workers started together race to create a new database's tables (and Optuna's schema version): each
    loser must find them made, not fail. Without the retry on IntegrityError this failed within two rounds."""
    opener = (
        "import os, sys, time\nfrom hydra_plugins.mlptrain_optuna.optuna_sweeper import open_storage\n"
        "print('ready', flush=True)\nwhile not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "open_storage(sys.argv[1])\n"
    )  # waiting by sleeps of a millisecond: spinning, the first ready took a core from the others' imports
    for round in range(4):
        url, go = f"sqlite:///{tmp_path / f'{round}.db'}", tmp_path / f"go{round}"
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", opener, url, str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        for process in openers:  # all imported: then all at once
            assert process.stdout.readline() == "ready\n", process.stderr.read()[-2000:]
        go.touch()
        for process in openers:
            assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]


@pytest.mark.parametrize(
    ("storage", "says"),
    [
        ("/proc/search/s.journal", "the study's journal file cannot be written there (No such file or directory"),
        ("postgresql://user@localhost/db", "names a database whose Python driver (psycopg) is not installed"),
    ],
    ids=["unwritable journal", "driver missing"],
)
def test_a_storage_the_study_cannot_open_is_one_paragraph(
    storage: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path}", *TINY]
    status, output = run_in_process("train.py", arguments, capsys)
    assert status == 1 and "Traceback" not in output, output
    assert f"hydra.sweeper.storage={storage}" in output and says in output, output
    assert not list(tmp_path.iterdir())  # nothing trained
