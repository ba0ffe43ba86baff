"""hydra/launcher=population: a sweep's jobs trained as populations (mlptrain.population).

    python train.py -m hydra/launcher=population seed=1,2,3,4,5 optimizer.lr=0.1,0.5

The jobs that can be stacked (the same network, loss, optimizer class, batch size, epochs and data; see
mlptrain.population.stack_key) train together, each in a thread of its own running the ordinary
train(cfg), so each gets the directory, files and results it would get alone. Jobs that cannot be
stacked run one after another, as Hydra's basic launcher runs them. Hydra finds this module as a plugin
because it lives in the hydra_plugins namespace package.
"""

import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)
JOB_FORMAT = (
    "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # a job's log lines, as Hydra's job_logging writes them
)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.mlptrain_population.population_launcher.PopulationLauncher"
    max_members: int = 1000  # at most this many jobs train as one population; more make several, in turn


ConfigStore.instance().store(
    group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="mlptrain"
)


class _ThisThread(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 1000) -> None:
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mlptrain.population import stack_key

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Population launcher sweeping over {len(job_overrides)} jobs in {sweep_dir}")
        jobs = []
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = f"{config.hydra.job.name}_{index}"
                config.hydra.job.num = index
            jobs.append((index, list(overrides), config))
        groups: dict[str, list[int]] = {}
        for position, (_, _, config) in enumerate(jobs):
            key = stack_key(config)
            groups.setdefault(key if key is not None else f"alone {position}", []).append(position)
        results: list[JobReturn | None] = [None] * len(jobs)
        for members in groups.values():
            for start in range(0, len(members), self.max_members):
                chosen = members[start : start + self.max_members]
                if len(chosen) == 1:
                    results[chosen[0]] = self._run_one(*jobs[chosen[0]])
                else:
                    for position, result in zip(chosen, self._run_population([jobs[p] for p in chosen])):
                        results[position] = result
        return results  # type: ignore[return-value]

    def _run_job(self, config: DictConfig, configure_logging: bool = True) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            configure_logging=configure_logging,
        )

    def _run_one(self, index: int, overrides: list[str], config: DictConfig) -> JobReturn:
        log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
        return self._run_job(config)

    def _run_population(self, jobs: list[tuple[int, list[str], DictConfig]]) -> list[JobReturn]:
        from mlptrain.population import Population, compiles, member_of

        names = [str(index) for index, _, _ in jobs]
        population = Population(names, compile=compiles(jobs[0][2]))
        log.info(f"Population of {len(jobs)} jobs, trained together:")
        results: list[Any] = [None] * len(jobs)

        def member(position: int) -> None:
            config = jobs[position][2]
            # Hydra's run-time values are one per process: each job's directory is fixed in its config first.
            output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            with open_dict(config):
                config.output_dir = str(output_dir.resolve())
            output_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(output_dir / f"{config.hydra.job.name}.log")
            handler.addFilter(_ThisThread())
            handler.setFormatter(logging.Formatter(JOB_FORMAT))
            logging.getLogger().addHandler(handler)
            try:
                with member_of(population, names[position]):
                    # one process-wide logging setup; each job's own file: the handler above
                    results[position] = self._run_job(config, configure_logging=False)
            finally:
                logging.getLogger().removeHandler(handler)
                handler.close()

        for index, overrides, _ in jobs:
            log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
        # The jobs' lines on the console as a job's own logging shows them (Hydra's says [HYDRA] instead).
        console = logging.Formatter(JOB_FORMAT)
        for root_handler in logging.getLogger().handlers:
            root_handler.setFormatter(console)
        threads = [threading.Thread(target=member, args=(p,), name=f"member-{names[p]}") for p in range(len(jobs))]
        previous = signal.getsignal(signal.SIGTERM)

        def stop(signum: int, frame: Any) -> None:  # a cluster's preemption: every member checkpoints and stops
            population.stop_requested = True

        signal.signal(signal.SIGTERM, stop)
        # Lightning's 64-true precision sets the process-wide default dtype in each training step and puts back
        # what it found; with steps in several threads, what it puts back can be another thread's float64.
        # Hydra's run-time config, one per process, is set by each run_job and put back when its job ends:
        # with jobs in threads, what one puts back may be another job's. Both are restored at the end.
        dtype = torch.get_default_dtype()
        hydra_config = HydraConfig.instance().cfg
        try:
            for thread in threads:
                thread.start()
            population.serve(threads)
            for thread in threads:
                thread.join()
        finally:
            signal.signal(signal.SIGTERM, previous)
            torch.set_default_dtype(dtype)
            HydraConfig.instance().cfg = hydra_config
        return results
