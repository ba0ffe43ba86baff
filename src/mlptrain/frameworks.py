"""Every private or undocumented framework API that mlptrain uses, in one place, each with the versions it was
tested on: an upgrade that breaks one breaks here, and a test that imports this module says so.

Tested with hydra-core 1.3.2 and 1.3.8, hydra-submitit-launcher 1.2.0, submitit 1.5.4, optuna 4.0.0 and 5.0.0,
lightning 2.6.6, torch 2.14.1, mlflow 3.17.2.
"""

from typing import Any

# hydra-core 1.3.2-1.3.8: the sweeper `-m` uses by default. hydra_plugins.mlptrain_population's sweeper is this
# one with a cheaper check of a sweep's configs (composing each of 1,000 jobs' takes Hydra 100 s).
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

# hydra-submitit-launcher 1.2.0: how its launcher (BaseSubmititLauncher.launch) turns its settings into a submitit
# executor, and the arguments its jobs are called with (BaseSubmititLauncher.__call__). hydra/launcher=
# population_slurm submits its populations with the same executor, and a job that trains alone as that launcher
# submits it.


def submitit_executor(settings: dict[str, Any]) -> Any:
    """A submitit executor made from a Hydra submitit launcher's settings (resolved), as that launcher makes it."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cluster = "slurm" if settings["_target_"].endswith("SlurmLauncher") else "local"
    rest = {key: value for key, value in settings.items() if key not in ("_target_", "submitit_folder")}
    first = {f"{cluster}_max_num_timeout": rest.pop("max_num_timeout")} if "max_num_timeout" in rest else {}
    executor = submitit.AutoExecutor(folder=settings["submitit_folder"], cluster=cluster, **first)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in shared else f"{cluster}_{key}": v for key, v in rest.items()})
    return executor


def submitit_job_arguments(overrides: list[str], index: int) -> tuple[Any, ...]:
    """What Hydra's submitit launcher calls itself with, in the cluster's job, to run job `index` of a sweep."""
    from hydra.core.singleton import Singleton

    return (list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}", Singleton.get_state())


# optuna 4.0-5.0: a study's sampler is its attribute `sampler`, which a trial's suggestions call. The Optuna sweeper
# (hydra_plugins.mlptrain_optuna) gives each trial a sampler seeded with its number, after ask() and before them.


def use_sampler(study: Any, sampler: Any) -> None:
    study.sampler = sampler


# hydra-core 1.3.2-1.3.8: the application object @hydra.main makes (hydra._internal.hydra.Hydra), whose run() and
# multirun() are the command line's: the run directory, its .hydra/ files, job logging, the launchers, sweepers and
# callbacks. mlptrain.runs (the notebook API) runs a command line's job through them, without a command line.


def hydra_application(config_module: str, job_name: str) -> Any:
    """Hydra's application over the configs of the package `config_module` (pkg://), its job named `job_name`
    (its log file: `job_name`.log), as @hydra.main makes it; set as GlobalHydra's, as @hydra.main sets it."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path

    return Hydra.create_main_hydra2(job_name, create_config_search_path(f"pkg://{config_module}"))


# lightning 2.6: keys of the checkpoints Trainer.save_checkpoint writes, undocumented. "loops" holds the loops'
# progress, which only a checkpoint of a whole training state has (resume=auto takes no other); "hparams_name"
# says how LightningModule.load_from_checkpoint passes "hyper_parameters" ("kwargs": as keyword arguments), which
# a population member's checkpoint, written by mlptrain, says as a run's own says it.
LOOPS_KEY = "loops"
HPARAMS_AS_KEYWORDS = {"hparams_name": "kwargs"}


__all__ = [
    "HPARAMS_AS_KEYWORDS",
    "LOOPS_KEY",
    "BasicSweeper",
    "BasicSweeperConf",
    "hydra_application",
    "submitit_executor",
    "submitit_job_arguments",
    "use_sampler",
]


# mlflow 3.17: MlflowClient.set_terminated writes two lines to stdout for each run of a tracking server (the run's
# and the experiment's URLs): 400 for a population of 200. Its store's update_run_info ends the run as
# set_terminated does (status and end time), without them.


def end_mlflow_run(client: Any, run_id: str, status: str) -> None:
    """End the MLflow run `run_id` with `status` (FINISHED, FAILED, KILLED), as MlflowClient.set_terminated does."""
    import time

    from mlflow.entities import RunStatus

    client._tracking_client.store.update_run_info(
        run_id, run_status=RunStatus.from_string(status), end_time=int(time.time() * 1000), run_name=None
    )
