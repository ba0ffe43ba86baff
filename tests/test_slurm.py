"""On a real one-node SLURM (tests/slurm_cluster.py): the README's sweep through hydra/launcher=slurm, the sbatch
script on the CPU, a preemption by `scontrol requeue` and the time-limit signal in mid-epoch. Each job ends with
the weights and metrics.csv of a job that ran through."""

import csv
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mlptrain.train import train
from tests.conftest import ROOT, compose_config, run_python
from tests.slurm_cluster import OneNodeSlurm, why_not
from tests.test_faults import same_as

pytestmark = [pytest.mark.slow, pytest.mark.slurm]  # one cluster, on one worker: --dist loadfile (pyproject.toml)

# Long enough epochs (500 mini-batches in Lightning's loop) that a signal sent once epoch 0 is checkpointed
# lands in the middle of epoch 1; dropout, so that a resume must also restore where the random draws were.
JOB = [
    "trainer.accelerator=cpu",
    "data.train_size=5000",
    "data.batch_size=10",
    "steps_per_call=1",
    "trainer.max_epochs=2",
    "model.dropout=0.2",
    "model.hidden=[32]",
    "report.enabled=false",
    "progress_bar=false",
]
# scripts/slurm/train.sbatch asks for a GPU, 4 CPUs and 16 GB: this node has 2 CPUs and no GPU.
ON_THIS_NODE = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=1G"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeSlurm]:
    reason = why_not()
    if reason and os.environ.get("MLPTRAIN_REQUIRE_SLURM"):  # .ci/run: there the cluster must run
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    cluster = OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_the_readme_sweep_through_the_slurm_launcher(slurm: OneNodeSlurm, tmp_path: Path) -> None:
    tiny = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=20", "report.enabled=false"]
    sweep = run_python(
        "train.py", "-m", "hydra/launcher=slurm", "model.activation=relu,tanh", *tiny,
        "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", env=slurm.env, timeout=600,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    for number, activation in enumerate(("relu", "tanh")):
        local = compose_config([*tiny, f"model.activation={activation}", "progress_bar=false"], tmp_path / activation)
        train(local)
        same_as(tmp_path / "sweep" / str(number), Path(local.output_dir))
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitted by submitit, run by SLURM


def _submit(slurm: OneNodeSlurm, log: Path) -> tuple[str, Path]:
    job_id = slurm.sbatch(*ON_THIS_NODE, f"--output={log}", "scripts/slurm/train.sbatch", *JOB, cwd=ROOT)
    return job_id, ROOT / "outputs" / "slurm" / job_id


def _once_epoch_1_has_begun(slurm: OneNodeSlurm, job_id: str, run: Path) -> None:
    """Returns as epoch 1 begins: once epoch 0's checkpoint is written. An epoch takes from 0.6 s (the node to
    itself) to 26 s (three jobs' threads on its two cores): a signal sent any later may find training over."""
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert time.monotonic() < deadline and slurm.job(job_id)["JobState"] in ("PENDING", "RUNNING")
        time.sleep(0.05)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["history"][-1]["epoch"] == 0


def test_the_sbatch_script_a_preemption_and_the_time_limit_signal_in_mid_epoch(
    slurm: OneNodeSlurm, tmp_path: Path
) -> None:
    """Three jobs of the same command: one runs through; one is requeued by the scheduler (SIGTERM, then a new
    start); one gets the time-limit signal (Lightning writes last.ckpt, as it does for a SIGTERM, and requeues
    it itself)."""
    jobs = {name: _submit(slurm, tmp_path / f"{name}.out") for name in ("through", "preempted", "timed")}
    try:
        _once_epoch_1_has_begun(slurm, *jobs["preempted"])
        slurm.run("scontrol", "requeue", jobs["preempted"][0])
        _once_epoch_1_has_begun(slurm, *jobs["timed"])
        slurm.run("scancel", "--signal=USR1", jobs["timed"][0])  # reaches the job's steps, as --signal=USR1@90 does
        records = {
            name: slurm.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED"}) for name, (job_id, _) in jobs.items()
        }
        outputs = {name: (tmp_path / f"{name}.out").read_text() for name in jobs}
        for name, record in records.items():
            assert record["JobState"] == "COMPLETED", outputs[name][-3000:]
            assert "Traceback" not in outputs[name], outputs[name][-3000:]
        assert records["through"]["Restarts"] == "0"
        assert records["preempted"]["Restarts"] == records["timed"]["Restarts"] == "1"
        assert "Training was interrupted during epoch 1" in outputs["preempted"]
        for name in ("preempted", "timed"):
            resumed = re.search(r"resume=auto: resuming from (\S+) \(epoch (\d+), (\d+) updates made\)", outputs[name])
            assert resumed is not None, outputs[name][-3000:]
            assert Path(resumed[1]) == jobs[name][1].resolve() / "checkpoints" / "last.ckpt"
            assert resumed[2] == "1" and 500 < int(resumed[3]) < 1000  # in mid-epoch 1: 500 mini-batches an epoch
            same_as(jobs[name][1], jobs["through"][1])
        rows = list(csv.DictReader((jobs["timed"][1] / "metrics.csv").open()))
        assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    finally:
        for job_id, run in jobs.values():
            slurm.run("scancel", job_id)
            shutil.rmtree(run, ignore_errors=True)


def test_a_search_whose_workers_are_a_slurm_job_array(slurm: OneNodeSlurm, tmp_path: Path) -> None:
    """scripts/slurm/search.sbatch as a 2-task job array: two workers, one journal file, 4 trials in all."""
    import optuna

    from tests.test_search import TINY

    search = tmp_path / "search"
    job_id = slurm.sbatch(
        "--array=0-1", *ON_THIS_NODE, f"--output={tmp_path}/%A_%a.out", "scripts/slurm/search.sbatch", *TINY,
        "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={search}/study.journal", f"hydra.sweep.dir={search}",
        cwd=ROOT,
    )  # fmt: skip
    try:
        for task in (0, 1):
            record = slurm.wait_for(f"{job_id}_{task}", {"COMPLETED", "FAILED", "CANCELLED"})
            output = (tmp_path / f"{job_id}_{task}.out").read_text()
            assert record["JobState"] == "COMPLETED" and "Traceback" not in output, output[-3000:]
        journal = optuna.storages.journal.JournalFileBackend(str(search / "study.journal"))
        study = optuna.load_study(study_name="mlptrain-search", storage=optuna.storages.JournalStorage(journal))
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(done) == 4 and len({str(t.params) for t in done}) == 4
        for t in done:
            assert (search / str(t.number) / "summary.json").exists()
        assert (search / "optimization_results.yaml").exists()
    finally:
        slurm.run("scancel", job_id)


def test_a_search_whose_trials_are_slurm_jobs_through_the_submitit_launcher(
    slurm: OneNodeSlurm, tmp_path: Path
) -> None:
    """hparams_search=optuna with hydra/launcher=slurm and n_jobs=2: each pair of trials a 2-task job array."""
    import yaml

    from tests.test_search import TINY

    on_this_node = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
    done = run_python(
        "train.py", "hparams_search=optuna", "hydra/launcher=slurm", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2", *TINY, *on_this_node, f"hydra.sweep.dir={tmp_path}", env=slurm.env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for number in range(4):
        summary = (tmp_path / str(number) / "summary.json").read_text()
        assert '"status": "completed"' in summary
    assert len(list((tmp_path / ".submitit").glob("*_1"))) == 2  # two arrays of two tasks
    assert yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())["completed_trials"] == 4


def test_a_population_sweep_as_two_population_jobs_one_preempted_one_at_its_time_limit(
    slurm: OneNodeSlurm, tmp_path: Path
) -> None:
    """hydra/launcher=population_slurm with max_members=2: 4 seeds as 2 SLURM jobs of 2 members each. Once their
    members have written epoch 0, one job is requeued by the scheduler (SIGTERM, then a new start) and the other
    gets the time-limit signal (SIGUSR1: Lightning requeues it); with resume=auto each job's next start finishes
    its members, and every member's records are those of its run alone (float64, 1e-9)."""
    import subprocess
    import sys

    from tests.test_population import SHORT, alone, assert_same_run

    sweep = tmp_path / "sweep"
    longer = ["data.train_size=5000", "trainer.max_epochs=4", "optimizer=sgd", "scheduler=none"]
    on_this_node = ["gpus_per_node=null", "cpus_per_task=1", "mem_gb=1"]
    command = [
        sys.executable, "train.py", "-m", "hydra/launcher=population_slurm", "hydra.launcher.max_members=2",
        "seed=1,2,3,4", "resume=auto", *SHORT, *longer,
        *(f"hydra.launcher.submit.{setting}" for setting in on_this_node), f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # Each job is stopped as soon as its members have written epoch 0, whichever job gets there first.
        stops = {1: ("scontrol", "requeue"), 3: ("scancel", "--signal=USR1")}
        deadline = time.monotonic() + 300
        while stops:
            for member in [m for m in stops if (sweep / str(m) / "checkpoints" / "last.ckpt").exists()]:
                task = next((sweep / ".submitit").glob(f"*_{member // 2}"))  # the array task of member's population
                slurm.run(*stops.pop(member), task.name)
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()[0][-3000:]
            time.sleep(0.01)
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0, output[-3000:]
        assert output.count("Population of 2 jobs, one job of the cluster") == 2
        for task in (0, 1):
            # submitit hands the result over as the job writes it, a moment before SLURM counts the job done
            record = slurm.wait_for(next((sweep / ".submitit").glob(f"*_{task}")).name, {"COMPLETED", "FAILED"})
            assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1"
    finally:
        process.kill()
    for number in range(4):
        assert "Training was interrupted" in (sweep / str(number) / "train.log").read_text()
        run = alone(tmp_path, f"alone{number}", *longer, f"seed={number + 1}")
        assert_same_run(sweep / str(number), run, steps=2000)
