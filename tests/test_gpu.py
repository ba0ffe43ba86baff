"""CUDA runs: skipped where there is no GPU (CI has none). On a GPU machine, `pytest tests/test_gpu.py` checks
every path that differs there: the data on the device, the fast and compiled steps against Lightning's loop,
the CUDA random-generator state in checkpoints, and a population's stacked engine."""

import json
from pathlib import Path

import pytest
import torch

from mlptrain.data import MNISTDataModule
from mlptrain.errors import RunInterrupted
from mlptrain.train import train
from tests.test_cluster import TWO_EPOCHS, _SigtermAt, epoch_rows
from tests.test_train import FLOAT64_SHORT, summary, weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = "trainer.accelerator=gpu"


def test_data_lives_on_the_gpu_when_training_there(make_cfg) -> None:
    cfg = make_cfg(GPU, "trainer.limit_train_batches=null", "model.hidden=[64]")
    train(cfg)
    result = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    assert result["device"].startswith("cuda") and result["test_acc"] >= 0.92


def test_tensor_batches_are_gathered_on_the_device() -> None:
    data = MNISTDataModule()
    data.setup(device=torch.device("cuda", 0))
    x, y = next(iter(data.train_dataloader()))
    assert x.is_cuda and y.is_cuda and x.shape == (128, 784)


@pytest.mark.parametrize(
    "setup",
    [
        ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true", "optimizer.weight_decay=0.01"],
        ["optimizer=adam", "optimizer.weight_decay=0.001", "scheduler=onecycle", "trainer.gradient_clip_val=0.5"],
        ["optimizer=adamw", "scheduler=cosine", "log_grad_norms=true"],
    ],
    ids=["sgd", "adam-clip", "adamw"],
)
def test_fast_and_compiled_steps_match_lightnings_loop_on_the_gpu(make_cfg, setup: list[str]) -> None:
    """The CPU test (tests/test_train.py::test_every_path_makes_the_plain_paths_updates) on CUDA, where torch.optim
    picks its foreach kernels and the compiled steps run Triton code."""
    common = [GPU, *setup, *FLOAT64_SHORT]
    plain = make_cfg(*common, "steps_per_call=1", "compile=false", run="plain")
    train(plain)
    for name, path in {
        "several": ["steps_per_call=7", "compile=false"],
        "compiled": ["steps_per_call=20", "compile=true"],
    }.items():
        other = make_cfg(*common, *path, run=name)
        train(other)
        a, b = weights(summary(plain)["checkpoints"]["last"]), weights(summary(other)["checkpoints"]["last"])
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-10, atol=1e-10), (name, key)
        assert summary(other)["global_steps"] == summary(plain)["global_steps"] == 140
        assert summary(other)["test_acc"] == pytest.approx(summary(plain)["test_acc"], abs=1e-9)


def test_checkpoints_hold_the_cuda_generator_and_resume_dropout_exactly(make_cfg) -> None:
    setup = [GPU, *TWO_EPOCHS]  # dropout 0.2: a resume must restore where the CUDA generator was
    straight = make_cfg(*setup, run="straight")
    train(straight)
    assert "cuda" in torch.load(summary(straight)["checkpoints"]["last"], weights_only=True)["rng_states"]
    stopped = make_cfg(*setup, run="stopped")
    with pytest.raises(RunInterrupted):
        train(stopped, callbacks=[_SigtermAt(epoch=1, batch=0)])  # mid-epoch
    resumed = make_cfg(*setup, "resume=auto", run="stopped")
    train(resumed)
    a, b = weights(summary(straight)["checkpoints"]["last"]), weights(summary(resumed)["checkpoints"]["last"])
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert epoch_rows(resumed.output_dir) == epoch_rows(straight.output_dir)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_population_on_the_gpu_gives_each_member_its_run_alone(tmp_path: Path, capsys, compiled: bool) -> None:
    """The stacked engine on CUDA (its parameters moved there, the optimizers' views of them, Triton kernels
    where compiled): each member's weights, optimizer state and metrics are its run alone's, float64, 1e-9."""
    from tests.test_population import alone, assert_same_run, sweep

    flag = f"compile={str(compiled).lower()}"
    folder = sweep(tmp_path, capsys, GPU, "seed=1,2", "optimizer=sgd", "optimizer.momentum=0.9", "scheduler=none", flag)
    for number in (0, 1):
        setup = (GPU, "optimizer=sgd", "optimizer.momentum=0.9", "scheduler=none", f"seed={number + 1}")
        assert json.loads((folder / str(number) / "summary.json").read_text())["device"].startswith("cuda")
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *setup))


@pytest.mark.slow
def test_members_differing_in_width_and_activation_on_the_gpu_are_their_runs_alone(tmp_path: Path, capsys) -> None:
    """What the notes compare, on CUDA: the narrower member zero-padded to the wider, activation against
    activation; each member its run alone (float64, 1e-9). A dropout job trains alone there, and the log says why:
    a run's masks come from CUDA's fused kernel, which a member's own generator cannot repeat."""
    from tests.conftest import run_in_process
    from tests.test_population import SHORT, alone, assert_same_run

    folder = tmp_path / "sweep"
    jobs = ("model.hidden=[20],[30]", "model.activation=sigmoid,relu", "model.dropout=0,0.2")
    short = [override for override in SHORT if not override.startswith(("model.hidden=", "trainer.accelerator="))]
    arguments = ["-m", "hydra/launcher=population", GPU, *jobs, "seed=1", *short, f"hydra.sweep.dir={folder}"]
    status, output = run_in_process("train.py", arguments, capsys)
    assert status == 0 and "Population of 4 members, trained together" in output, output[-3000:]
    assert "Jobs #1 #3 #5 #7 train on their own, not in a population: model.dropout on a GPU" in output, output
    members = [(h, a, d) for h in ("[20]", "[30]") for a in ("sigmoid", "relu") for d in (0, 0.2)]
    for number, (hidden, activation, dropout) in enumerate(members):
        log = (folder / str(number) / "train.log").read_text()
        assert ("with the other members of a population" in log) == (dropout == 0), number
        assert json.loads((folder / str(number) / "summary.json").read_text())["device"].startswith("cuda")
        job = (GPU, f"model.hidden={hidden}", f"model.activation={activation}", f"model.dropout={dropout}", "seed=1")
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *job))


# Where a run alone takes Lightning's loop and its members one mini-batch a step (training_path.member_path), on
# CUDA: each member its run alone, float64 to 1e-9 (bf16-mixed: to bf16's rounding, tests/test_population.py's).
GPU_LOOP_OPTIONS = {
    "accumulate_grad_batches": (
        ("+trainer.accumulate_grad_batches=3", "trainer.gradient_clip_val=0.05", "scheduler=onecycle",
         "log_grad_norms=true"),
        "seed=1,2", "trainer.accumulate_grad_batches", 48, 1e-9,
    ),
    "dataloader": (("data.loader=dataloader",), "data.shuffle_seed=1,2", "data.loader=dataloader", 140, 1e-9),
    # bf16: on the H200, weights and losses within 1e-3 of the runs alone, test/acc 3 images in 2,000 apart
    "bf16-mixed": (("trainer.precision=bf16-mixed",), "seed=1,2", "trainer.precision=bf16-mixed", 140, 5e-3),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("option", list(GPU_LOOP_OPTIONS))
def test_members_of_one_mini_batch_a_step_on_the_gpu_are_their_runs_alone(tmp_path: Path, capsys, option: str) -> None:
    from tests.test_population import assert_members_are_runs_alone

    fixed, swept, why, steps, tolerance = GPU_LOOP_OPTIONS[option]
    assert_members_are_runs_alone(tmp_path, capsys, (GPU, "steps_per_call=auto", *fixed), swept, why, tolerance, steps)
    device = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())["device"]
    assert device.startswith("cuda"), device
