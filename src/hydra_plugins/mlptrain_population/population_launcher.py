"""hydra/launcher=population: a sweep's jobs trained as populations (mlptrain.population).

    python train.py -m hydra/launcher=population seed=1,2,3,4,5 optimizer.lr=0.1,0.5

The jobs that can be stacked (the same network, loss, optimizer class, batch size, epochs and data; see
mlptrain.stacking.stack_key) train together as one stacked model, in this process's main thread, each job
with the directory, files and result it would get alone. Jobs that cannot be stacked run one after another, as
Hydra's basic launcher runs them. Hydra finds this module as a plugin because it lives in the hydra_plugins
namespace package.

hydra/launcher=population_slurm hands each population to SLURM instead, as one job (through submitit, with the
settings of hydra/launcher=slurm in hydra.launcher.submit), all at once: a 1,000-job sweep with max_members=250
is 4 jobs of the cluster. A job that trains alone is submitted as hydra/launcher=slurm submits it.

Composing a job's config takes Hydra about 0.1 s, which for a thousand jobs would be longer than training them:
a job whose overrides differ from the last composed job's only in values of mlptrain.stacking.MEMBER_KEYS
is that config with those values set, as Hydra would have set them.
"""

import copy
import dataclasses
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mlptrain.frameworks import BasicSweeper, BasicSweeperConf, submitit_executor, submitit_job_arguments
from mlptrain.rundir import run_status, yaml_text

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.mlptrain_population.population_launcher.PopulationLauncher"
    _recursive_: bool = False  # submit stays settings (its _target_ names Hydra's submitit launcher)
    max_members: int = 1000  # at most this many jobs train as one population; more make several, in turn
    # None: the populations train in this process, in turn. A submitit launcher's settings (population_slurm:
    # conf/hydra/launcher/slurm.yaml's): each population is one job of that cluster, all submitted at once.
    submit: Any = None


ConfigStore.instance().store(
    group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="mlptrain"
)


@dataclass
class SweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.mlptrain_population.population_launcher.Sweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="mlptrain", node=SweeperConf, provider="mlptrain")


class Sweeper(BasicSweeper):
    """Hydra's basic sweeper (conf/train.yaml makes it the default of -m), checking a batch of jobs as the
    launchers compose them: a job whose overrides differ from the last composed job's only in values of member
    keys is not composed again. Hydra's own check composes every job's config before the launcher composes
    them again, 0.1 s each."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        composed: dict[str, Override] | None = None
        for overrides in batch:
            parsed = _parsed(overrides)
            if composed is not None and _member_changes(composed, parsed) is not None:
                continue
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            composed = parsed


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 1000, submit: Any = None) -> None:
        self.max_members = max_members
        self.submit = submit is not None
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mlptrain import signals
        from mlptrain.cli import quiet_console

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        quiet_console()
        signals.hold()  # as a command line's run does: SIGTERM is Lightning's during training alone
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Population launcher sweeping over {len(job_overrides)} jobs in {sweep_dir}")
        jobs: list[Job] = []
        groups: dict[str, list[int]] = {}
        composed: Composed | None = None
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            task = _derived(composed, list(overrides)) if composed is not None else None
            if task is None:  # composed by Hydra
                config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                composed = Composed.of(overrides, config)
            job = Job(index, list(overrides), composed, task)
            groups.setdefault(composed.key or f"alone {len(jobs)}", []).append(len(jobs))
            jobs.append(job)
        _say_what_did_not_stack(jobs, groups)
        chosen = [
            members[start : start + self.max_members]
            for members in groups.values()
            for start in range(0, len(members), self.max_members)
        ]
        results: list[JobReturn | None] = [None] * len(jobs)
        try:
            if self.submit:
                runs = self._submitted([[jobs[p] for p in positions] for positions in chosen])
            else:
                runs = (self._run([jobs[p] for p in positions]) for positions in chosen)
            for positions, returns in zip(chosen, runs):
                for position, result in zip(positions, returns):
                    results[position] = result
        finally:
            signals.drain()
        return results  # type: ignore[return-value]

    def _run(self, jobs: "list[Job]") -> list[JobReturn]:
        """The jobs in this process: a population, or one job as Hydra's basic launcher runs it."""
        if len(jobs) == 1:
            return [self._run_one(jobs[0])]
        how = "trained" if jobs[0].composed.config.train else "tested"  # train is part of the stacking key
        log.info(f"Population of {len(jobs)} jobs, {how} together:")
        population = PopulationJob.of(jobs, self.config)
        return _returns(jobs, population.tasks, population(), population.name)

    def _run_one(self, job: "Job") -> JobReturn:
        log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
        config = job.composed.config
        if job.derived is not None:  # a population's member left on its own (max_members): composed by Hydra
            config = self.hydra_context.config_loader.load_sweep_config(self.config, job.overrides)
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{job.index}"
            config.hydra.job.num = job.index
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _submitted(self, populations: "list[list[Job]]") -> list[list[JobReturn]]:
        """Each population (each job that cannot be stacked too) as one job of the cluster that submit's
        settings name, all submitted together (an array, at most array_parallelism at once); their returns."""
        settings = OmegaConf.to_container(self.config.hydra.launcher.submit, resolve=True)
        alone = instantiate(settings)  # Hydra's submitit launcher, for a job that trains alone
        alone.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
        executor = submitit_executor(settings)
        submitted = []
        with executor.batch():
            for jobs in populations:
                if len(jobs) == 1:  # as hydra/launcher=slurm runs it
                    (job,) = jobs
                    log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
                    submitted.append((None, executor.submit(alone, *submitit_job_arguments(job.overrides, job.index))))
                else:
                    log.info(f"Population of {len(jobs)} jobs, one job of the cluster:")
                    population = dataclasses.replace(PopulationJob.of(jobs, self.config), requeued=True)
                    submitted.append((population, executor.submit(population)))
        log.info(f"Submitted {len(submitted)} jobs; their output is in {Path(settings['submitit_folder']).parent}")
        returns = []
        for jobs, (population, future) in zip(populations, submitted):
            try:
                value = future.result()
            except Exception as error:  # the job failed on the cluster: every member's JobReturn says so
                returns.append([_failed(job, error) for job in jobs])
                continue
            returns.append([value] if population is None else _returns(jobs, population.tasks, value, population.name))
        return returns


@dataclass
class PopulationJob:
    """A population's training, where it runs: in this process, or in a cluster's job (submitit pickles it)."""

    tasks: list[DictConfig]
    name: str
    hydra_logging: Any
    verbose: Any
    sweep_dir: str  # the sweep's folder, absolute (logger=mlflow: its MLflow run is the members' parent)
    requeued: bool = False  # a job of a cluster that requeues it after a preemption or the time-limit signal

    @classmethod
    def of(cls, jobs: "list[Job]", config: DictConfig) -> "PopulationJob":
        for job in jobs:
            log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
        tasks = [job.prepare() for job in jobs]
        name = str(jobs[0].composed.config.hydra.job.name)
        sweep_dir = str(Path(str(config.hydra.sweep.dir)).resolve())
        return cls(tasks, name, config.hydra.hydra_logging, config.hydra.verbose, sweep_dir)

    def __call__(self) -> list[float | None]:
        from mlptrain import signals
        from mlptrain.cli import quiet_console
        from mlptrain.population_train import train_population

        configure_log(self.hydra_logging, self.verbose)
        quiet_console()
        signals.hold()
        try:
            values = train_population(self.tasks, log_name=f"{self.name}.log", sweep_dir=Path(self.sweep_dir))
        finally:
            signals.drain()
        if self.requeued and any(run_status(task.output_dir) == "interrupted" for task in self.tasks):
            # SLURM requeues the job (a preemption), or Lightning did (the time-limit signal), and its next start
            # resumes the members (resume=auto). Ending without a result keeps submitit, and so the sweep,
            # waiting for that start; a job cancelled for good is seen as ended, and its members as failed.
            log.info("The population was stopped by a signal: its job ends here, to start again when requeued")
            sys.exit(1)
        return values


def _returns(jobs: "list[Job]", tasks: list[DictConfig], values: list[float | None], name: str) -> list[JobReturn]:
    returns = []
    for job, task, value in zip(jobs, tasks, values):
        done = JobReturn(
            overrides=job.overrides,
            cfg=task,
            hydra_cfg=None,  # Hydra's own launchers hand it to Hydra callbacks (hydra.callbacks), not called here
            working_dir=str(Path.cwd()),
            task_name=name,
            status=JobStatus.COMPLETED,
        )
        done.return_value = value
        returns.append(done)
    return returns


def _say_what_did_not_stack(jobs: "list[Job]", groups: dict[str, list[int]]) -> None:
    """One log line for each reason some jobs train on their own, and one naming the keys that split the rest
    into several populations (members may differ only in mlptrain.stacking.MEMBER_KEYS)."""
    from mlptrain.rundir import flat
    from mlptrain.stacking import MEMBER_KEYS, MEMBER_KINDS, MEMBER_WIDTHS, network_values

    alone: dict[str, list[int]] = {}
    for job in jobs:
        if job.composed.key is None:
            alone.setdefault(job.composed.why, []).append(job.index)
    for why, indices in alone.items():
        log.info(f"Jobs {_numbers(indices)} train on their own, not in a population: {why}")
    stacked = [positions for key, positions in groups.items() if not key.startswith("alone ")]
    if len(stacked) > 1:
        tasks = [jobs[at[0]].composed.task for at in stacked]
        configs = [flat(network_values(t)) for t in tasks]  # train=false: the networks the checkpoints hold
        depths = {len(c.get("model.hidden") or ()) for c in configs}
        keys = sorted(
            key
            for key in set().union(*configs)
            if key not in (*MEMBER_KEYS, "output_dir")
            and not key.startswith(MEMBER_KINDS)
            and (key not in MEMBER_WIDTHS or len(depths) > 1)
            and len({repr(c.get(key)) for c in configs}) > 1
        )
        keys = [f"{key} (the depth: {' and '.join(map(str, sorted(depths)))} hidden layers)" if key in MEMBER_WIDTHS
                else key for key in keys]  # fmt: skip
        members = [key for key in (*MEMBER_KEYS, *MEMBER_KINDS) if key != "output_dir"] + ["model.hidden's widths"]
        keys = keys or ["model.activation (maxout, or a `_target_` one: weights of their own shape or kind)"]
        log.info(
            f"The jobs make {len(stacked)} populations, not one: they differ in {', '.join(keys)} (the members of "
            f"one population may differ only in {', '.join(members)}; maxout and `_target_` activations not, nor "
            "the depth)"
        )


def _numbers(indices: list[int]) -> str:
    more = f" and {len(indices) - 20} more" if len(indices) > 20 else ""
    return " ".join(f"#{index}" for index in indices[:20]) + more


def _failed(job: "Job", error: Exception) -> JobReturn:
    failed = JobReturn(overrides=job.overrides, status=JobStatus.FAILED)
    failed.return_value = error
    return failed


class Composed(NamedTuple):
    """A job's config as Hydra composed it: its overrides, parsed; the config; the task's part (no hydra); and
    mlptrain.stacking.stack_key of it."""

    overrides: dict[str, Override]
    config: DictConfig
    task: DictConfig
    key: str | None
    why: str  # where key is None: why the job trains on its own
    hydra: dict[str, Any]  # config.hydra as plain containers, interpolations kept

    @classmethod
    def of(cls, overrides: Sequence[str], config: DictConfig) -> "Composed":
        from mlptrain.stacking import stack_key

        key, why = stack_key(config)
        return cls(_parsed(overrides), config, _task_of(config), key, why, _plain(config.hydra))


@dataclass
class Job:
    """A job of the sweep: its number, its overrides, the job composed last, and its own task config where it is
    that one's with other member values (_derived), else None (it is that one, or runs alone)."""

    index: int
    overrides: list[str]
    composed: Composed
    derived: DictConfig | None

    def prepare(self) -> DictConfig:
        """The task config of the job (its output_dir set), with the files Hydra writes for a job: .hydra/
        config.yaml, hydra.yaml and overrides.yaml, as Hydra's run_job writes them (no fsync either)."""
        hydra = copy.deepcopy(self.composed.hydra)
        own = self.composed.overrides if self.derived is None else _parsed(self.overrides)
        hydra["job"].update(id=f"{hydra['job']['name']}_{self.index}", num=self.index)
        hydra["job"]["override_dirname"] = _override_dirname(own, hydra["job"]["config"]["override_dirname"])
        hydra["overrides"]["task"] = list(self.overrides)
        # The sweep's folder and the job's subfolder, resolved as Hydra resolves them for the job.
        subdir = OmegaConf.create({"hydra": {key: hydra[key] for key in ("job", "sweep")}}).hydra.sweep.subdir
        output_dir = (Path(str(self.composed.config.hydra.sweep.dir)) / str(subdir)).resolve()
        hydra["runtime"]["output_dir"] = str(output_dir)
        task = self.derived if self.derived is not None else copy.deepcopy(self.composed.task)
        with read_write(task), open_dict(task):
            task.output_dir = str(output_dir)
        if hydra.get("output_subdir") is not None:
            folder = output_dir / str(hydra["output_subdir"])
            folder.mkdir(parents=True, exist_ok=True)
            for name, node in (
                ("config.yaml", OmegaConf.to_container(task)),
                ("hydra.yaml", {"hydra": hydra}),
                ("overrides.yaml", list(self.overrides)),
            ):
                (folder / name).write_text(yaml_text(node), encoding="utf-8")
        return task


def _task_of(config: DictConfig) -> DictConfig:
    """What Hydra's run_job hands its task function: the config without hydra."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=False, enum_to_str=True)  # type: ignore[return-value]


def _override_dirname(overrides: dict[str, Override], settings: dict[str, Any]) -> str:
    """hydra.job.override_dirname, as Hydra makes it from a job's overrides."""
    kept = sorted(o.input_line for o in overrides.values() if o.key_or_group not in settings["exclude_keys"])
    return re.sub("=", settings["kv_sep"], settings["item_sep"].join(kept))


def _parsed(overrides: Sequence[str]) -> dict[str, Override]:
    return {override.key_or_group: override for override in OverridesParser.create().parse_overrides(list(overrides))}


def _member_changes(base: dict[str, Override], own: dict[str, Override]) -> list[Override] | None:
    """The overrides in which a job (`own`) differs from a composed one (`base`) where it differs from it only in
    the values of member keys (mlptrain.stacking.MEMBER_KEYS); else None."""
    from mlptrain.stacking import MEMBER_KEYS

    if own.keys() != base.keys():
        return None
    changed = [override for key, override in own.items() if override.input_line != base[key].input_line]
    for override in changed:
        plain = override.type == OverrideType.CHANGE and override.package is None and not override.is_sweep_override()
        if not plain or override.key_or_group not in MEMBER_KEYS:
            return None
    return changed


def _derived(composed: Composed, overrides: list[str]) -> DictConfig | None:
    """The task config of a job whose overrides differ from the composed job's only in the values of member keys:
    a copy of that job's with those values set, as Hydra sets them; else None (Hydra composes it, and says what
    is wrong with a value that does not fit its key). Only for jobs that can be stacked: the others run as Hydra
    runs them, with their own whole config."""
    if composed.key is None:
        return None
    changed = _member_changes(composed.overrides, _parsed(overrides))
    if changed is None:
        return None
    derived = copy.deepcopy(composed.task)
    with read_write(derived), open_dict(derived):
        try:
            for override in changed:
                OmegaConf.update(derived, override.key_or_group, override.value(), merge=True)
        except Exception:  # a value of the wrong type, say
            return None
    return derived
