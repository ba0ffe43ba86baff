"""Seconds per epoch of the trainer (as `python train.py` runs it, in Lightning's own loop, and compiled)
against a bare PyTorch loop, the DataLoader path and the NumPy baseline; and whole runs, end to end.

    python scripts/bench.py                          # both setups below, 3 rounds of 2 epochs per system
    python scripts/bench.py setups=[nielsen] rounds=5 epochs=3 out=bench.json
    python scripts/bench.py setups=[relu] overrides=[data.train_size=10000]   # any config override, every setup
    python scripts/bench.py setups=[nielsen] "systems=[mlptrain,'NumPy, backprop by hand']"   # only these rows
    python scripts/bench.py e2e=true                 # python train.py experiment=nielsen against network.py, 30 epochs
    python scripts/bench.py populations=true runs=3  # sweeps trained as populations, against one run and job by job
    python scripts/bench.py members=[20,200] runs=3  # N Nielsen members, 1 epoch: population against a stacked loop
    python scripts/bench.py gradients=true           # ms per update of N members' gradients, eager and compiled
    python scripts/bench.py one=true runs=3          # a single run against a population of one, 3 epochs
    python scripts/bench.py against=HEAD~3 runs=5    # python train.py here against another commit's, whole processes
    python scripts/bench.py commands=true runs=5     # every command's wall time and peak memory, train.py's phases
    python scripts/bench.py tracked=200 runs=3       # a population of 200 with logger=mlflow against logger=csv

In one process, the systems take turns (round 1: each system, round 2: each system, ...), each round a fresh
model trained for `epochs` epochs on the same batches, so that load on a shared machine hits them alike. The
first epoch of every round is left out of "s/epoch", the median of the others, with their min-max; the
warm-up column is round 1's first epoch (with torch.compile, compiling happens there). Every system
trains the same network the same way and reports the test accuracy it reached, so that none can win by
doing less work. Peak memory is the process's resident set growth while the system ran
(host) and torch's peak allocation (CUDA). The `mlptrain` row is the trainer with no speed settings: the path
that `steps_per_call=auto compile=auto` picks for the setup's whole run (its `path` field says which), timed
for `epochs` epochs.

With commands=true, each command a user runs is timed as a whole process, start to exit, `runs` times, taking
turns: `import torch` and `import lightning` for reference, `import mlptrain`, `train.py --help`, a config mistake,
`python train.py` (the default run, pictures included), `predict.py` and `export.py` on its checkpoint, and a
population of two. `python train.py`'s phases come from its train.log's timestamps and the epochs' own training
times; peak resident memory from the kernel (wait4's ru_maxrss). The last table checks issue 32's targets.

With e2e=true, whole processes are timed from start to exit, `runs` times each, taking turns:
`python train.py experiment=nielsen` with a cold compile cache (a fresh TORCHINDUCTOR_CACHE_DIR) and with a
warm one, against the Nielsen-style network of mlptrain.baselines.nielsen_network trained for the same epochs on the
same batches in a process of its own (loading MNIST, and the test accuracy after every epoch as network.py
prints it, included).
"""

import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlptrain.baselines.numpy_mlp import NumpyBaseline
from mlptrain.data import MNISTDataModule, TensorBatches
from mlptrain.losses import make_loss
from mlptrain.model import MLP
from mlptrain.step import member_gradients
from mlptrain.train import train
from mlptrain.training_path import choose_path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SETUPS = {
    # 784-256-256-10 ReLU, cross-entropy, Adam 1e-3, batch 128
    "relu": ["model.hidden=[256,256]", "optimizer=adam", "scheduler=none", "data.batch_size=128"],
    # Nielsen's 784-30-10 sigmoid, quadratic cost, SGD 3.0, batch 10
    "nielsen": ["experiment=nielsen"],
}
DEFAULTS = {
    "setups": list(SETUPS),
    "systems": None,  # a list of the table's systems (their names, as in its rows) to time only those; None: all
    "rounds": 3,
    "epochs": 2,
    "out": "bench.json",
    "device": "auto",
    "e2e": False,  # true: whole processes, python train.py experiment=nielsen against network.py (below)
    "runs": 3,  # e2e: runs of each
    "e2e_epochs": 30,
    "overrides": [],  # config overrides added to every setup, e.g. [data.train_size=10000] for a quicker table
    "populations": False,  # true: sweeps as populations (hydra/launcher=population) against one run and job by job
    "sweeps": None,  # populations: only the POPULATION_SWEEPS whose name holds one of these words, e.g. [activations]
    "mode": "table",  # nielsen_network: one process training the network.py baseline (what e2e times);
    # stacked_loop: one process training `members` Nielsen networks in a plain stacked loop (what members= times)
    "members": None,  # N or [N, ...]: N Nielsen members, 1 epoch, population against the plain stacked loop
    "train_size": 5000,  # members: training images
    "gradients": False,  # true: a population's gradients per update, eager against compiled (member_gradients_table)
    "one": False,  # true: a single run against the same job as a population of one (one_member_table)
    "system": None,  # mode=one_member: single or population
    "setup": None,  # mode=one_member: nielsen or default
    "commands": False,  # true: every command's wall time and peak memory, and train.py's phases (commands_table)
    "train_overrides": [],  # commands: overrides for its train.py and population runs (the default run if none)
    "tracked": None,  # N: a population of N members with logger=mlflow against logger=csv (tracking_table)
    "tracked_epochs": 2,  # tracked: the population's epochs
    "against": None,  # a git commit: python train.py here against that commit's (against_table)
}
# gradients=true: (setup, overrides, members) of each row
GRADIENT_ROWS = [("default", [], 1), ("default", [], 12), ("nielsen", ["experiment=nielsen"], 1)]
GRADIENT_ROWS += [("nielsen", ["experiment=nielsen"], 10), ("nielsen", ["experiment=nielsen"], 200)]


def _compose(overrides: list[str], run_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *overrides,
                f"output_dir={run_dir}",
                "progress_bar=false",
                "report.enabled=false",
                "trainer.num_sanity_val_steps=0",
            ],
        )


class _PeakRSS:
    """Samples this process's resident memory every 10 ms while a system runs; Linux only (else None)."""

    def __enter__(self) -> "_PeakRSS":
        self.start = self.peak = self._rss()
        self.running = self.start is not None
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int | None:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
        except OSError:
            return None

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss() or 0)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()

    @property
    def growth_mb(self) -> float | None:
        return None if self.start is None else (self.peak - self.start) / 2**20


class _EpochSeconds(L.Callback):
    """The module's own epoch times (training only: the other systems skip validation), kept after the fit."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = list(pl_module.epoch_seconds)


def as_train_py_runs_it(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The config with steps_per_call and compile set to what auto picks for the setup's whole run, so that a
    benchmark of a few epochs times the path a full `python train.py` takes."""
    path = choose_path(cfg)
    return OmegaConf.merge(cfg, {"steps_per_call": path.steps_per_call, "compile": path.compile}), path.why


def lightning_run(cfg: DictConfig, epochs: int) -> tuple[list[float], float]:
    """mlptrain's trainer (validation each epoch is not timed)."""
    timer = _EpochSeconds()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = OmegaConf.merge(cfg, {"output_dir": run_dir, "trainer": {"max_epochs": epochs}})
        train(cfg, callbacks=[timer])
        accuracy = json.loads((Path(run_dir) / "summary.json").read_text())["test_acc"]
    return timer.seconds, accuracy


def eager_run(cfg: DictConfig, epochs: int, device: torch.device) -> tuple[list[float], float]:
    """The bare loop: the same model, batches and optimizer, and nothing else."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(cfg.seed, verbose=False)
    model = MLP(**plain["model"]).to(device)
    settings = {key: value for key, value in plain["optimizer"].items() if key != "implementation"}
    optimizer = instantiate(settings)(model.parameters())  # torch.optim's default implementation: a bare loop's
    loss_fn = make_loss(**plain["loss"])
    data = _tensor_data(cfg, device)
    batches: TensorBatches = data.train_dataloader()  # type: ignore[assignment]
    seconds = []
    for epoch in range(epochs):
        batches.sampler.set_epoch(epoch)
        _sync(device)
        started = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    test_x, test_y = (torch.from_numpy(array).to(device) for array in data.arrays("test"))
    with torch.no_grad():
        accuracy = (model(test_x).argmax(-1) == test_y).float().mean().item()
    return seconds, accuracy


def numpy_run(cfg: DictConfig, epochs: int) -> tuple[list[float], float]:
    """The hand-written NumPy MLP (float32), on the same batches."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(cfg.seed, verbose=False)
    torch_model = MLP(**plain["model"])
    baseline = NumpyBaseline(model=plain["model"], loss=plain["loss"], optimizer=plain["optimizer"])
    baseline.load_weights(
        [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in torch_model.layers]
    )
    data = _tensor_data(cfg, torch.device("cpu"))
    x, y = data.arrays("train")
    seconds = []
    for epoch in range(epochs):
        batches = data.epoch_batches(epoch)
        started = time.perf_counter()
        baseline.fit_epoch(x, y, batches)
        seconds.append(time.perf_counter() - started)
    test_x, test_y = data.arrays("test")
    accuracy = float((baseline.predict(test_x) == test_y).mean())
    return seconds, accuracy


def _tensor_data(cfg: DictConfig, device: torch.device) -> MNISTDataModule:
    data = MNISTDataModule(**{**OmegaConf.to_container(cfg.data, resolve=True), "loader": "tensor"})
    data.setup(device=device)
    return data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_setup(
    name: str, rounds: int, epochs: int, device: torch.device, overrides: list[str] = (), only: list[str] | None = None
) -> list[dict[str, Any]]:
    accelerator = f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"
    with tempfile.TemporaryDirectory() as scratch:
        cfg = _compose([*SETUPS[name], *overrides, accelerator], Path(scratch))
    n_train = cfg.data.train_size or 60_000 - cfg.data.val_size
    as_is, path = as_train_py_runs_it(cfg)
    systems: dict[str, Callable[[], tuple[list[float], float]]] = {
        "mlptrain": lambda: lightning_run(as_is, epochs),
        "mlptrain, Lightning's loop (steps_per_call=1)": lambda: lightning_run(
            OmegaConf.merge(cfg, {"steps_per_call": 1, "compile": False}), epochs
        ),
        "mlptrain, compile=true": lambda: lightning_run(OmegaConf.merge(cfg, {"compile": True}), epochs),
        "bare eager PyTorch loop": lambda: eager_run(cfg, epochs, device),
        "mlptrain, loader=dataloader": lambda: lightning_run(
            OmegaConf.merge(cfg, {"data": {"loader": "dataloader"}}), epochs
        ),
        "NumPy, backprop by hand": lambda: numpy_run(cfg, epochs),
    }
    if only is not None:
        unknown = set(only) - set(systems)
        if unknown:
            sys.exit(f"bench.py: no system {sorted(unknown)}: choose from {list(systems)}")
        systems = {system: run for system, run in systems.items() if system in only}
    results: dict[str, dict[str, Any]] = {
        s: {"warmup": [], "epochs": [], "acc": [], "rss": [], "cuda": []} for s in systems
    }
    for _ in range(rounds):
        for system, run in systems.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with _PeakRSS() as memory:
                seconds, accuracy = run()
            result = results[system]
            result["warmup"].append(seconds[0])
            result["epochs"] += seconds[1:]
            result["acc"].append(accuracy)
            result["rss"].append(memory.growth_mb)
            if device.type == "cuda":
                result["cuda"].append(torch.cuda.max_memory_allocated(device) / 2**20)
    rows = []

    def median_of(system: str) -> float | None:
        return statistics.median(results[system]["epochs"]) if system in results else None

    eager, numpy = median_of("bare eager PyTorch loop"), median_of("NumPy, backprop by hand")
    for system, result in results.items():
        median = statistics.median(result["epochs"])
        rss = [m for m in result["rss"] if m is not None]
        rows.append(
            {
                "setup": name,
                "system": system,
                "s_per_epoch": median,
                "s_per_epoch_min": min(result["epochs"]),
                "s_per_epoch_max": max(result["epochs"]),
                "warmup_s": result["warmup"][0],  # round 1: compiling happens there, later rounds reuse its cache
                "samples_per_s": n_train / median,
                "x_eager": median / eager if eager else None,
                "x_numpy": median / numpy if numpy else None,
                "peak_rss_growth_mb": max(rss) if rss else None,
                "peak_cuda_mb": max(result["cuda"]) if result["cuda"] else None,
                "test_acc": statistics.median(result["acc"]),
                "epochs_timed": len(result["epochs"]),
                **({"path": path} if system == "mlptrain" else {}),
            }
        )
    return rows


def ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setup | system | s/epoch (median) | min-max | warm-up s | samples/s | × eager | × NumPy | peak RSS +MB "
        "| test acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = "" if r["peak_rss_growth_mb"] is None else f"{r['peak_rss_growth_mb']:.0f}"
        lines.append(
            f"| {r['setup']} | {r['system']} | {r['s_per_epoch']:.3f} | {r['s_per_epoch_min']:.3f}-"
            f"{r['s_per_epoch_max']:.3f} | {r['warmup_s']:.2f} | {r['samples_per_s']:,.0f} | {ratio(r['x_eager'])} | "
            f"{ratio(r['x_numpy'])} | "
            f"{rss} | {100 * r['test_acc']:.2f}% |"
        )
    return "\n".join(lines)


def nielsen_network_process(epochs: int) -> None:
    """Train network.py's design (mlptrain.baselines.nielsen_network) as experiment=nielsen sets it up, printing
    the test accuracy after each epoch as network.py does: the baseline that e2e times as a process of its own."""
    from mlptrain.baselines.nielsen_network import NielsenBaseline

    with tempfile.TemporaryDirectory() as scratch:
        cfg = _compose(["experiment=nielsen"], Path(scratch))
    L.seed_everything(cfg.seed, verbose=False)
    baseline = NielsenBaseline(hidden=cfg.model.hidden, lr=cfg.optimizer.lr)
    baseline.load_weights(
        [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in MLP(**cfg.model).layers]
    )
    data = _tensor_data(cfg, torch.device("cpu"))
    (x, y), (test_x, test_y) = data.arrays("train"), data.arrays("test")
    for epoch in range(epochs):
        baseline.fit_epoch(x, y, data.epoch_batches(epoch))
        print(f"Epoch {epoch}: {int((baseline.predict(test_x) == test_y).sum())} / {len(test_y)}", flush=True)


def stacked_loop_process(members: int, train_size: int, epochs: int) -> None:
    """N Nielsen networks (784-30-10 sigmoid, the quadratic cost, SGD 3.0, batch 10, N(0, 1) weights, each member
    its own shuffle) trained as a plain stacked loop, written apart from mlptrain's engine: a baddbmm forward,
    autograd, one in-place update; then each member's test accuracy. The yardstick of members=N."""
    with tempfile.TemporaryDirectory() as scratch:
        cfg = _compose(["experiment=nielsen", f"data.train_size={train_size}"], Path(scratch))
    data = _tensor_data(cfg, torch.device("cpu"))
    x, y = data.splits["train"].images, data.splits["train"].labels  # (n, 784), (n,)
    test_x, test_y = data.splits["test"].images, data.splits["test"].labels
    torch.manual_seed(cfg.seed)
    shapes = [(784, 30), (30, 10)]
    weights = [torch.randn(members, fan_in, fan_out, requires_grad=True) for fan_in, fan_out in shapes]
    biases = [torch.randn(members, 1, fan_out, requires_grad=True) for _, fan_out in shapes]
    params = [*weights, *biases]
    target = torch.nn.functional.one_hot(y, 10).float()
    for _ in range(epochs):
        order = torch.stack([torch.randperm(len(y)) for _ in range(members)])  # (N, n): each member's shuffle
        for start in range(0, len(y), 10):
            index = order[:, start : start + 10]  # (N, B)
            a = x[index]  # (N, B, 784)
            for w, b in zip(weights, biases):
                a = torch.sigmoid(torch.baddbmm(b, a, w))
            cost = 0.5 * ((a - target[index]) ** 2).sum(-1).mean(-1)  # (N,): each member's mean over the batch
            grads = torch.autograd.grad(cost.sum(), params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(cfg.optimizer.lr * g)
    with torch.no_grad():
        a = test_x.expand(members, *test_x.shape)
        for w, b in zip(weights, biases):
            a = torch.sigmoid(torch.baddbmm(b, a, w))
        accuracy = (a.argmax(-1) == test_y).float().mean(-1)  # (N,)
    print(f"mean test accuracy {float(accuracy.mean()):.4f} over {members} members", flush=True)


def median_ms(work: Callable[[], Any], calls: int, rounds: int = 5) -> float:
    """Milliseconds a call of `work`: the median over `rounds` of `calls` calls, after 5 to warm up."""
    for _ in range(5):
        work()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        times.append((time.perf_counter() - started) / calls * 1e3)
    return statistics.median(times)


def member_gradients_table() -> list[dict[str, Any]]:
    """A population's gradients for one update of N members (each its own mini-batch): step.member_gradients
    of the stacked MLP as the engine calls it eagerly (plain autograd), and its torch.func form compiled alone,
    in ms a call (median of 5 rounds), with the time the first compiled call took."""
    return [gradient_row(setup, overrides, members) for setup, overrides, members in GRADIENT_ROWS]


def gradient_row(setup: str, overrides: list[str], members: int) -> dict[str, Any]:
    from mlptrain.system import MLPSystem

    with tempfile.TemporaryDirectory() as scratch:
        cfgs = [_compose([*overrides, f"seed={m + 1}"], Path(scratch) / str(m)) for m in range(members)]
    system = MLPSystem.population(cfgs, choose_path(cfgs[0]))
    batch = cfgs[0].data.batch_size
    x, y = torch.rand(members, batch, 784), torch.randint(0, 10, (members, batch))
    calls = 30 if members > 50 else 200
    network, loss_fn, params = system.model, system.loss_fn, dict(system.model.named_parameters())
    eager = median_ms(lambda: member_gradients(network, loss_fn, params, x, y, system.clip, system.norms_of), calls)

    def traced(values: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        named = dict(zip(system.names, values))
        return member_gradients(network, loss_fn, named, x, y, system.clip, system.norms_of, functional=True)

    torch.compiler.reset()
    compiled = torch.compile(traced, fullgraph=True, dynamic=False)
    started = time.perf_counter()
    compiled([p.detach() for p in system.stacked], x, y)
    compiling = time.perf_counter() - started
    traced = median_ms(lambda: compiled([p.detach() for p in system.stacked], x, y), calls)
    return {
        "setup": setup, "members": members, "batch": batch, "eager_ms": eager, "compiled_ms": traced,
        "first_compiled_call_s": compiling,
    }  # fmt: skip


def one_member_process(system: str, setup: str) -> None:
    """One process: the job (`setup`, 3 epochs, no pictures) as a single run (train) or as a population of one
    (train_population), what one=true times."""
    from mlptrain.population_train import train_population

    with tempfile.TemporaryDirectory() as scratch:
        overrides = ["report.enabled=false", "progress_bar=false", "trainer.max_epochs=3"]
        cfg = _compose([*overrides, *(["experiment=nielsen"] if setup == "nielsen" else [])], Path(scratch) / "run")
        if system == "single":
            train(cfg)
        else:
            train_population([cfg])
        summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
        print(f"test accuracy {summary['test_acc']:.4f}, {summary['wall_time_s']:.2f} s in train()", flush=True)


def one_member_table(runs: int) -> list[dict[str, Any]]:
    """The same job as a single run and as a population of one, whole processes timed start to exit, taking
    turns, `runs` times each: what it costs today to train a single run as the engine with N = 1."""
    rows = []
    for setup in ("nielsen", "default"):
        measured: dict[str, list[tuple[float, float]]] = {"single run": [], "population of one": []}
        for _ in range(runs):
            for name, system in (("single run", "single"), ("population of one", "population")):
                command = [sys.executable, "scripts/bench.py", "mode=one_member", f"system={system}", f"setup={setup}"]
                measured[name].append(timed_process(command))
        rows += timing_rows(measured, "single run", "x_single_run", {name: {"setup": setup} for name in measured})
    return rows


# against=REV's setups: the default run, and experiment=nielsen for 3 epochs (pictures included, as a user runs them)
AGAINST_SETUPS = [("default", []), ("nielsen, 3 epochs", ["experiment=nielsen", "trainer.max_epochs=3"])]


def against_table(rev: str, runs: int, extra: list[str]) -> list[dict[str, Any]]:
    """`python train.py` of this checkout against the same command of commit `rev` (a git worktree of it, its
    src/ first on Python's path), whole processes timed start to exit, taking turns, `runs` times each, for each
    of AGAINST_SETUPS (`extra`: overrides added to each); each row says whether the two runs' metrics.csv are the
    same bytes."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "other"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(other), rev], cwd=ROOT, check=True, capture_output=True
        )
        try:
            for index, (setup, overrides) in enumerate(AGAINST_SETUPS):
                measured: dict[str, list[tuple[float, float]]] = {rev: [], "this checkout": []}
                for turn in range(runs):
                    for side, (name, root) in enumerate(((rev, other), ("this checkout", ROOT))):
                        run_dir = Path(scratch) / f"run-{index}-{side}-{turn}"
                        command = ["train.py", *overrides, *extra, "progress_bar=false", f"hydra.run.dir={run_dir}"]
                        measured[name].append(timed_process([sys.executable, *command], root=root))
                first = [Path(scratch) / f"run-{index}-{side}-0" for side in (0, 1)]
                same = len({(run_dir / "metrics.csv").read_bytes() for run_dir in first}) == 1
                fields = {name: {"setup": setup, "same_metrics_csv": same} for name in measured}
                rows += timing_rows(measured, rev, f"x_{rev}", fields)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
    return rows


# Starts a command and reports its wall time, exit status and peak memory. The command is this small process's
# child, not the benchmark's: Linux keeps the high-water mark of the memory a process had before exec() in its
# ru_maxrss, and a child forked from the benchmark (torch and Lightning loaded) would report at least that.
_LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(json.dumps([time.perf_counter() - started, os.waitstatus_to_exitcode(status), usage.ru_maxrss]))
"""


def timed_process(
    command: list[str], cache: str | None = None, exit_status: int = 0, root: Path = ROOT
) -> tuple[float, float]:
    """Run `command` from the repository root (`root`: another checkout's, its src/ first on Python's path);
    (seconds from start to exit, peak resident memory in MiB). cache: torch.compile's cache directory for it
    (TORCHINDUCTOR_CACHE_DIR), else the usual one. Its stderr goes to a file, not a pipe: a pipe nobody reads
    would block a process that writes much to it. RuntimeError unless it exits with `exit_status`."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache} if cache is not None else dict(os.environ)
    if root != ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryFile() as stderr:
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *command], cwd=root, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
        if launched.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"the launcher of {' '.join(command)} failed: {stderr.read().decode()[-2000:]}")
        seconds, status, max_rss_kib = json.loads(launched.stdout)
        if status != exit_status:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {stderr.read().decode()[-2000:]}")
    return seconds, max_rss_kib / 1024  # KiB on Linux -> MiB


def end_to_end(runs: int, epochs: int) -> list[dict[str, Any]]:
    """Whole processes timed start to exit, systems taking turns: the trainer with a cold and with a warm
    compile cache, and the Nielsen-style network. Returns one row per system with the median and the runs."""
    warm_cache = tempfile.mkdtemp(prefix="bench-inductor-")
    train_py = [sys.executable, "train.py", "experiment=nielsen", f"trainer.max_epochs={epochs}"]
    network_py = [sys.executable, "scripts/bench.py", "mode=nielsen_network", f"e2e_epochs={epochs}"]

    def timed(command: list[str], cache: str) -> float:
        with tempfile.TemporaryDirectory() as run_dir:
            extra = [f"hydra.run.dir={run_dir}"] if command is train_py else []
            return timed_process([*command, *extra], cache)[0]

    timed(train_py, warm_cache)  # fills the warm cache; not timed
    seconds: dict[str, list[float]] = {"mlptrain, cold compile cache": [], "mlptrain, warm compile cache": [],
                                       "nielsen_network": []}  # fmt: skip
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cold_cache:
            seconds["mlptrain, cold compile cache"].append(timed(train_py, cold_cache))
        seconds["mlptrain, warm compile cache"].append(timed(train_py, warm_cache))
        seconds["nielsen_network"].append(timed(network_py, warm_cache))
    baseline = statistics.median(seconds["nielsen_network"])
    return [
        {
            "system": name,
            "epochs": epochs,
            "wall_s": statistics.median(runs_s),
            "runs_s": runs_s,
            "x_nielsen_network": statistics.median(runs_s) / baseline,
        }
        for name, runs_s in seconds.items()
    ]


# The sweeps of issue 12's targets: (fixed overrides, swept overrides). One run is the sweep's first job alone.
POPULATION_SWEEPS = {
    "10 seeds of experiment=nielsen, 3 epochs": (
        ["experiment=nielsen", "trainer.max_epochs=3"],
        ["seed=1,2,3,4,5,6,7,8,9,10"],
    ),
    "the default network, 3 seeds x 4 learning rates": ([], ["seed=1,2,3", "optimizer.lr=0.0005,0.001,0.002,0.004"]),
    "the default network, 4 activations x 3 seeds, 3 epochs": (
        ["trainer.max_epochs=3"],
        ["model.activation=sigmoid,tanh,relu,softplus", "seed=1,2,3"],
    ),
    # Nielsen's chapter 1: 30 hidden neurons, then 100. One population, the narrower zero-padded to the wider.
    "experiment=nielsen, widths [30] and [100] x 3 seeds, 3 epochs": (
        ["experiment=nielsen", "trainer.max_epochs=3"],
        ["model.hidden=[30],[100]", "seed=1,2,3"],
    ),
}


def members_table(counts: list[int], runs: int, train_size: int) -> list[dict[str, Any]]:
    """N Nielsen members for 1 epoch on `train_size` images, whole processes timed start to exit, taking turns:
    `python train.py -m hydra/launcher=population experiment=nielsen ... 'seed=range(1,N+1)'` against the plain
    stacked loop (stacked_loop_process), `runs` times each; the median of each and their ratio, and peak memory."""
    rows = []
    for count in counts:
        population = [
            sys.executable, "train.py", "-m", "hydra/launcher=population", "experiment=nielsen", "trainer.max_epochs=1",
            f"data.train_size={train_size}", "report.enabled=false", f"seed=range(1,{count + 1})",
        ]  # fmt: skip
        loop = [
            sys.executable, "scripts/bench.py", "mode=stacked_loop", f"members={count}", f"train_size={train_size}",
        ]  # fmt: skip
        measured: dict[str, list[tuple[float, float]]] = {"population": [], "stacked loop": []}
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as out:
                measured["population"].append(timed_process([*population, f"hydra.sweep.dir={out}"]))
            measured["stacked loop"].append(timed_process(loop))
        rows += timing_rows(measured, "stacked loop", "x_stacked_loop", {name: {"members": count} for name in measured})
    return rows


def tracking_table(members: int, runs: int, epochs: int) -> list[dict[str, Any]]:
    """What logger=mlflow costs a population (issue 34: within 10% of its time): `python train.py -m
    hydra/launcher=population 'seed=range(1,N+1)'` (the default network, `epochs` epochs, no pictures) with
    logger=csv and with logger=mlflow, whole processes timed start to exit, `runs` times each, taking turns. The
    MLflow store is an embedded SQLite database that an earlier run made; a store's first use (creating its tables)
    is its own row, timed once, first."""
    sweep = [
        sys.executable, "train.py", "-m", "hydra/launcher=population", f"trainer.max_epochs={epochs}",
        "report.enabled=false", "progress_bar=false", f"seed=range(1,{members + 1})",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as store:
        tracked = [*sweep, "logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{store}/mlflow.db"]
        measured: dict[str, list[tuple[float, float]]] = {}
        with tempfile.TemporaryDirectory() as out:
            measured["logger=mlflow, a new store"] = [timed_process([*tracked, f"hydra.sweep.dir={out}"])]
        measured.update({"logger=csv": [], "logger=mlflow": []})
        for _ in range(runs):
            for name, command in (("logger=csv", [*sweep, "logger=csv"]), ("logger=mlflow", tracked)):
                with tempfile.TemporaryDirectory() as out:
                    measured[name].append(timed_process([*command, f"hydra.sweep.dir={out}"]))
    return timing_rows(measured, "logger=csv", "x_csv", {name: {"members": members} for name in measured})


def timing_rows(
    measured: dict[str, list[tuple[float, float]]], reference: str, ratio: str, fields: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """A row per system of whole-process timings ((seconds, peak MiB) per run): `fields[system]` first, then the
    median wall time, the runs, the ratio to the `reference` system's median (as `ratio`) and the peak memory."""
    reference_s = statistics.median(seconds for seconds, _ in measured[reference])
    rows = []
    for name, results in measured.items():
        wall = statistics.median(seconds for seconds, _ in results)
        rows.append(
            {
                **fields[name],
                "system": name,
                "wall_s": wall,
                "runs_s": [round(seconds, 1) for seconds, _ in results],
                ratio: wall / reference_s,
                "peak_rss_mb": max(memory for _, memory in results),
            }
        )
    return rows


def populations(runs: int, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Whole commands timed from start to exit (the last summary.json is written just before), with their peak
    resident memory: each sweep as a population (with torch.compile's cache as earlier runs left it, and with an
    empty one), its first job alone (`runs` times each, taking turns), and the sweep job by job with Hydra's
    basic launcher (once: it takes longest). No pictures (report.enabled=false)."""

    def timed(args: list[str], empty_cache: bool = False) -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
            where = [f"hydra.sweep.dir={out}"] if "-m" in args else [f"hydra.run.dir={out}"]
            command = [sys.executable, "train.py", *args, "report.enabled=false", *where]
            return timed_process(command, cache if empty_cache else None)

    chosen = {name: sweep for name, sweep in POPULATION_SWEEPS.items() if not only or any(w in name for w in only)}
    if not chosen:
        sys.exit(f"sweeps={only} names none of {list(POPULATION_SWEEPS)}")
    rows = []
    for sweep, (fixed, swept) in chosen.items():
        first = [override.split(",")[0] for override in swept]
        jobs = 1
        for override in swept:
            jobs *= len(override.split(","))
        population = ["-m", "hydra/launcher=population", *fixed, *swept]
        systems = {  # name: (arguments, with an empty compile cache)
            "one run": ([*fixed, *first], False),
            "population": (population, False),
            "population, empty compile cache": (population, True),
        }
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name in systems}
        for _ in range(runs):
            for name, (args, empty_cache) in systems.items():
                measured[name].append(timed(args, empty_cache))
        measured["job by job"] = [timed(["-m", *fixed, *swept])]
        fields = {name: {"sweep": sweep, "jobs": 1 if name == "one run" else jobs} for name in measured}
        rows += timing_rows(measured, "one run", "x_one_run", fields)
    return rows


def _log_times(log: Path) -> list[tuple[float, str]]:
    """train.log's lines as (seconds since the epoch, message)."""
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("[") and "][" in line:
            stamp = time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")) + int(line[21:24]) / 1000
            lines.append((stamp, line.split(" - ", 1)[-1]))
    return lines


def train_phases(log: Path, started: float, ended: float) -> dict[str, float]:
    """Where a `python train.py` process's wall time went, from its train.log: `started` and `ended` are the
    process's start and exit (time.time())."""
    lines = _log_times(log)
    path = next(t for t, message in lines if message.startswith("Training path"))
    epochs = [(t, float(message.rsplit("(", 1)[1].split(" s training")[0])) for t, message in lines
              if message.startswith("epoch ") and " s training)" in message]  # fmt: skip
    training = sum(seconds for _, seconds in epochs)
    return {
        "start to the 'Training path' line (imports, config, checks)": path - started,
        "to epoch 0's start (data, model, trainer, sanity check)": epochs[0][0] - path - epochs[0][1],
        "training (the epochs' own times)": training,
        "validation and checkpoints (epochs 1 on)": epochs[-1][0] - epochs[0][0] - training + epochs[0][1],
        "after the last epoch: test, report, summary": lines[-1][0] - epochs[-1][0],
        "after the last log line, to exit": ended - lines[-1][0],
    }


def commands_table(runs: int, train_overrides: list[str]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every command as a user runs it, `runs` times each, taking turns: (rows of wall time and peak memory, the
    median of each phase of `python train.py`)."""
    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    run_dir, ckpt = work / "run", work / "run" / "checkpoints" / "best.ckpt"
    commands: dict[str, tuple[list[str], int]] = {  # name: (command, its exit status)
        "python train.py": ([python, "train.py", *train_overrides, f"hydra.run.dir={run_dir}"], 0),
        "import torch": ([python, "-c", "import torch"], 0),
        "import lightning": ([python, "-c", "import lightning"], 0),
        "import mlptrain": ([python, "-c", "import mlptrain"], 0),
        "python train.py --help": ([python, "train.py", "--help"], 0),
        "python train.py optimizer.lr=-1 (refused)": (
            [python, "train.py", "optimizer.lr=-1", f"hydra.run.dir={work / 'refused'}"], 1),
        "scripts/predict.py index=8": ([python, "scripts/predict.py", f"ckpt_path={ckpt}", "index=8"], 0),
        "scripts/export.py (the page)": ([python, "scripts/export.py", f"ckpt_path={ckpt}", f"out={work / 'page'}"], 0),
        "population of 2 (seed=1,2)": ([python, "train.py", "-m", "hydra/launcher=population", "seed=1,2",
                                        *train_overrides, f"hydra.sweep.dir={work / 'sweep'}"], 0),
        "mlptrain train --help": ([python, "-m", "mlptrain", "train", "--help"], 0),
        # the same run as the first, recorded in MLflow's embedded store as well (its cost: against the first)
        "python train.py logger=mlflow": ([python, "train.py", *train_overrides, "logger=mlflow",
                                           f"logger.mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                                           f"hydra.run.dir={work / 'tracked'}"], 0),
    }  # fmt: skip
    if importlib.util.find_spec("mlflow") is None:  # the extra is not installed
        del commands["python train.py logger=mlflow"]
    fresh = {
        "python train.py": run_dir,
        "population of 2 (seed=1,2)": work / "sweep",
        "python train.py logger=mlflow": work / "tracked",
    }
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    phases: list[dict[str, float]] = []
    for _ in range(runs):
        for name, (command, status) in commands.items():
            if name in fresh:
                shutil.rmtree(fresh[name], ignore_errors=True)
            started = time.time()
            measured[name].append(timed_process(command, exit_status=status))
            if name == "python train.py":
                phases.append(train_phases(run_dir / "train.log", started, started + measured[name][-1][0]))
    shutil.rmtree(work)
    rows = timing_rows(measured, "import torch", "x_import_torch", {name: {"command": name} for name in measured})
    return rows, {phase: statistics.median(p[phase] for p in phases) for phase in phases[0]}


def command_targets(rows: list[dict[str, Any]], phases: dict[str, float]) -> list[tuple[str, str, bool]]:
    """Issue 32's targets against this run's medians: (target, the figures, met)."""
    wall = {row["command"]: row["wall_s"] for row in rows}
    rss = {row["command"]: row["peak_rss_mb"] for row in rows}
    training = phases["training (the epochs' own times)"]
    run, torch_s = wall["python train.py"], wall["import torch"]
    return [
        ("python train.py: wall <= training + 3 s", f"{run:.1f} s against {training:.1f} + 3 s", run <= training + 3),
        ("predict.py: <= import torch + 0.5 s", f"{wall['scripts/predict.py index=8']:.2f} s against "
         f"{torch_s:.2f} + 0.5 s", wall["scripts/predict.py index=8"] <= torch_s + 0.5),
        ("train.py --help: <= 1 s", f"{wall['python train.py --help']:.2f} s", wall["python train.py --help"] <= 1),
        ("import mlptrain: <= 1.2x import torch", f"{wall['import mlptrain'] / torch_s:.2f}x",
         wall["import mlptrain"] <= 1.2 * torch_s),
        ("peak RSS of the default run: <= import torch's + 250 MB", f"{rss['python train.py']:.0f} MiB against "
         f"{rss['import torch']:.0f} + 250", rss["python train.py"] <= rss["import torch"] + 250),
    ]  # fmt: skip


def print_rows(header: str, titles: list[str], keys: list[str], rows: list[dict[str, Any]], out: str) -> None:
    """A table of whole-process timings as Markdown (seconds to 1 decimal, ratios to 2, memory whole), and the
    rows as JSON in `out`."""

    def shown(key: str, value: Any) -> str:
        if key == "runs_s":
            return ", ".join(f"{t:.1f}" for t in value)
        if key.startswith("x_"):
            return f"{value:.2f}"
        return f"{value:.1f}" if key == "wall_s" else f"{value:.0f}" if key == "peak_rss_mb" else str(value)

    print(header)
    print("| " + " | ".join(titles) + " |\n|" + "---|" * len(titles))
    for row in rows:
        print("| " + " | ".join(shown(key, row[key]) for key in keys) + " |")
    Path(out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"JSON: {out}")


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the table is the output
    args = OmegaConf.merge(DEFAULTS, OmegaConf.from_cli())
    if args.mode == "nielsen_network":
        nielsen_network_process(args.e2e_epochs)
        sys.exit(0)
    if args.mode == "stacked_loop":
        stacked_loop_process(args.members, args.train_size, 1)
        sys.exit(0)
    if args.mode == "one_member":
        one_member_process(args.system, args.setup)
        sys.exit(0)
    if args.commands:
        rows, phases = commands_table(args.runs, list(args.train_overrides))
        print_rows(
            f"torch {torch.__version__}, {os.cpu_count()} cores; whole processes, median of {args.runs}, taking turns",
            ["command", "wall s", "runs", "× import torch", "peak RSS MiB"],
            ["command", "wall_s", "runs_s", "x_import_torch", "peak_rss_mb"],
            rows,
            args.out,
        )
        print("\n| python train.py's phase | s (median) |\n|---|---|")
        for phase, seconds in phases.items():
            print(f"| {phase} | {seconds:.2f} |")
        print("\n| target | measured | met |\n|---|---|---|")
        targets = command_targets(rows, phases)
        for target, figures, met in targets:
            print(f"| {target} | {figures} | {'met' if met else 'missed'} |")
        Path(args.out).write_text(json.dumps({"rows": rows, "train_phases": phases, "targets": targets}, indent=2))
        sys.exit(0)
    if args.tracked:
        print_rows(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.runs}, taking turns",
            ["members", "system", "wall s", "runs", "× logger=csv", "peak RSS MiB"],
            ["members", "system", "wall_s", "runs_s", "x_csv", "peak_rss_mb"],
            tracking_table(args.tracked, args.runs, args.tracked_epochs),
            args.out,
        )
        sys.exit(0)
    if args.gradients:
        rows = member_gradients_table()
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms an update, median of 5 rounds")
        print("| setup | members | batch | eager ms | compiled ms | first compiled call s |\n|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['setup']} | {r['members']} | {r['batch']} | {r['eager_ms']:.3f} | {r['compiled_ms']:.3f} "
                f"| {r['first_compiled_call_s']:.1f} |"
            )
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
        print(f"JSON: {args.out}")
        sys.exit(0)
    if args.against:
        rev = str(args.against)
        print_rows(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.runs}, taking turns",
            ["setup", "system", "wall s", "runs", f"× {rev}", "peak RSS MiB", "same metrics.csv"],
            ["setup", "system", "wall_s", "runs_s", f"x_{rev}", "peak_rss_mb", "same_metrics_csv"],
            against_table(rev, args.runs, list(args.overrides)),
            args.out,
        )
        sys.exit(0)
    if args.one:
        print_rows(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.runs}, taking turns",
            ["setup", "system", "wall s", "runs", "× single run", "peak RSS MiB"],
            ["setup", "system", "wall_s", "runs_s", "x_single_run", "peak_rss_mb"],
            one_member_table(args.runs),
            args.out,
        )
        sys.exit(0)
    if args.members:
        counts = [args.members] if isinstance(args.members, int) else list(args.members)
        print_rows(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.runs}, taking turns",
            ["members", "system", "wall s", "runs", "× stacked loop", "peak RSS MiB"],
            ["members", "system", "wall_s", "runs_s", "x_stacked_loop", "peak_rss_mb"],
            members_table(counts, args.runs, args.train_size),
            args.out,
        )
        sys.exit(0)
    if args.populations:
        print_rows(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; one run, population: median of {args.runs}",
            ["sweep", "system", "jobs", "wall s", "runs", "× one run", "peak RSS MiB"],
            ["sweep", "system", "jobs", "wall_s", "runs_s", "x_one_run", "peak_rss_mb"],
            populations(args.runs, list(args.sweeps) if args.sweeps else None),
            args.out,
        )
        sys.exit(0)
    if args.e2e:
        rows = end_to_end(args.runs, args.e2e_epochs)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.runs} runs of each, taking turns")
        print("| system | epochs | wall s (median) | runs | × nielsen_network |\n|---|---|---|---|---|")
        for r in rows:
            runs_s = ", ".join(f"{t:.1f}" for t in r["runs_s"])
            print(f"| {r['system']} | {r['epochs']} | {r['wall_s']:.1f} | {runs_s} | {r['x_nielsen_network']:.2f} |")
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
        print(f"JSON: {args.out}")
        sys.exit(0)
    wanted = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if wanted == "auto" else wanted)
    rows = [
        row
        for name in args.setups
        for row in bench_setup(
            name,
            args.rounds,
            args.epochs,
            device,
            list(args.overrides),
            None if args.systems is None else list(args.systems),
        )
    ]
    header = (
        f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, rounds {args.rounds} x {args.epochs} epochs"
    )
    print(header)
    print(table(rows))
    Path(args.out).write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    print(f"JSON: {args.out}")
