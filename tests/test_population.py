"""hydra/launcher=population: a sweep's jobs trained as one stacked model, each with the results of a run alone."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from mlptrain.train import train
from mlptrain.training_path import choose_path
from tests.conftest import compose_config, csv_histories, run_in_process
from tests.test_records import DEBUG_FLAGS

pytestmark = pytest.mark.slow  # whole sweeps

# 2 epochs of 70 mini-batches (the last of 5 images, the others 10), float64: the population's updates must be
# each run's own.
SHORT = [
    "trainer.accelerator=cpu",  # also on a GPU machine, where dropout jobs train alone: tests/test_gpu.py's there
    "model.hidden=[20]",
    "data.train_size=695",
    "data.batch_size=10",
    "steps_per_call=20",
    "trainer.max_epochs=2",
    "trainer.precision=64-true",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "report.enabled=false",
    "progress_bar=false",
]


def sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], *overrides: str, ends: int = 0) -> Path:
    """`python train.py -m hydra/launcher=population ...`, in this process, ending with exit status `ends`;
    returns the sweep folder."""
    folder = tmp_path / "sweep"
    given = {override.split("=")[0] for override in overrides}
    short = [override for override in SHORT if override.split("=")[0] not in given]
    no_report = "hydra.callbacks.sweep_status.report=false"  # the sweep's comparison: tests/test_sweep.py
    status, output = run_in_process(
        "train.py",
        ["-m", "hydra/launcher=population", *overrides, *short, no_report, f"hydra.sweep.dir={folder}"],
        capsys,
    )
    assert status == ends, output[-3000:]
    return folder


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def alone(tmp_path: Path, name: str, *overrides: str) -> Path:
    """The same job as a run of its own."""
    cfg = compose_config([*SHORT, *overrides], tmp_path / name)
    train(cfg)
    return Path(cfg.output_dir)


def epoch_values(run: Path) -> list[dict[str, float]]:
    import csv

    rows = csv.DictReader((run / "metrics.csv").open())
    wanted = ("train/", "val/", "test/", "lr-")
    return [{k: float(v) for k, v in row.items() if v and k.startswith(wanted)} for row in rows]


def assert_same_run(a: Path, b: Path, tolerance: float = 1e-9, steps: int = 140) -> None:
    ckpt_a = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt_b = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in ckpt_a["state_dict"].items():
        torch.testing.assert_close(ckpt_b["state_dict"][key], value, rtol=tolerance, atol=tolerance)
    state_a, state_b = ckpt_a["optimizer_states"][0]["state"], ckpt_b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for index, values in state_a.items():
        for key, value in values.items():
            torch.testing.assert_close(state_b[index][key].to(value.dtype), value, rtol=tolerance, atol=tolerance)
    rows_a, rows_b = epoch_values(a), epoch_values(b)
    assert [row.keys() for row in rows_a] == [row.keys() for row in rows_b]
    for row_a, row_b in zip(rows_a, rows_b):
        for key, value in row_a.items():
            assert row_b[key] == pytest.approx(value, rel=tolerance, abs=tolerance), key
    summary_a, summary_b = (json.loads((run / "summary.json").read_text()) for run in (a, b))
    assert summary_a["status"] == summary_b["status"] == "completed"
    assert summary_a["global_steps"] == summary_b["global_steps"] == steps


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_each_member_gets_the_weights_and_metrics_of_its_own_run(tmp_path: Path, capsys, compiled: bool) -> None:
    """4 jobs (2 seeds x 2 learning rates) of AdamW with a cosine schedule, against each run alone (uncompiled)."""
    flag = f"compile={str(compiled).lower()}"
    folder = sweep(tmp_path, capsys, "seed=1,2", "optimizer.lr=0.001,0.01", flag)
    jobs = [("seed=1", "optimizer.lr=0.001"), ("seed=1", "optimizer.lr=0.01"), ("seed=2", "optimizer.lr=0.001")]
    jobs.append(("seed=2", "optimizer.lr=0.01"))
    for number, overrides in enumerate(jobs):
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *overrides))
    assert (folder / "multirun.yaml").is_file()
    assert yaml.safe_load((folder / "3" / ".hydra" / "overrides.yaml").read_text())[:2] == [
        "seed=2",
        "optimizer.lr=0.01",
    ]
    # A job's config.yaml is the one Hydra's composition gives, though only the first job's config was composed.
    composed = compose_config([*SHORT, "seed=2", "optimizer.lr=0.01", flag], (folder / "3").resolve())
    assert (folder / "3" / "config.yaml").read_text() == OmegaConf.to_yaml(composed, resolve=True)
    how = "compiled" if compiled else "not compiled"
    assert (
        f"per training step, {how} ({flag}), with the other members of a population"
        in (folder / "0" / "train.log").read_text()
    )


def test_each_member_is_tested_at_its_best_checkpoint_not_its_last_weights(tmp_path: Path, capsys) -> None:
    """Two members whose val/acc peaks before their last epoch: each is tested at the best.ckpt its
    ModelCheckpoint names (read back from the file), as its run alone tests its own."""
    settings = ("optimizer=sgd", "scheduler=none", "seed=1", "trainer.max_epochs=4")
    folder = sweep(tmp_path, capsys, *settings, "optimizer.lr=1.0,3.0")
    for number, lr in ((0, "1.0"), (1, "3.0")):
        ((tested_step, _),) = csv_histories(folder / str(number))["test/acc"]
        best = torch.load(folder / str(number) / "checkpoints" / "best.ckpt", weights_only=True)
        assert tested_step == best["updates_done"] < 280  # the best is not the last: the case under test
        run_alone = alone(tmp_path, f"alone{number}", *settings, f"optimizer.lr={lr}")
        assert_same_run(folder / str(number), run_alone, steps=280)
        # Both tested with best.ckpt's weights: the test accuracy train=false finds in that file
        best_path = folder / str(number) / "checkpoints" / "best.ckpt"
        evaluated = alone(tmp_path, f"evaluated{number}", "train=false", f"ckpt_path={best_path}")
        for tested in (folder / str(number), run_alone):
            assert summary_of(tested)["test_acc"] == summary_of(evaluated)["test_acc"]


@pytest.mark.parametrize("compiled", [False], ids=["eager"])  # compiled: 5 min cold for 4 kinds (docs/benchmarks.md)
def test_members_may_differ_in_activation_cost_and_dropout(tmp_path: Path, capsys, compiled: bool) -> None:
    """What the notes compare, in one population: activation against activation, the quadratic cost against
    cross-entropy, with and without dropout (not compiled: compiled code draws other masks); each member is its
    run alone (float64, 1e-9; the runs alone uncompiled). `compiled=True` passes too, in 6 min of compiling."""
    dropouts = (0,) if compiled else (0, 0.2)
    jobs = ["model.activation=sigmoid,relu", "loss=mse,cross_entropy", f"model.dropout={','.join(map(str, dropouts))}"]
    folder = tmp_path / "sweep"
    flag = f"compile={str(compiled).lower()}"
    arguments = ["-m", "hydra/launcher=population", *jobs, "seed=1", flag, *SHORT, f"hydra.sweep.dir={folder}"]
    status, output = run_in_process("train.py", arguments, capsys)
    assert status == 0 and f"Population of {4 * len(dropouts)} jobs, trained together" in output, output[-3000:]
    for number, (activation, loss, dropout) in enumerate(
        (a, c, d) for a in ("sigmoid", "relu") for c in ("mse", "cross_entropy") for d in dropouts
    ):
        overrides = (f"model.activation={activation}", f"loss={loss}", f"model.dropout={dropout}", "seed=1")
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *overrides))
        how = "compiled" if compiled else "not compiled"
        assert f"per training step, {how} (" in (folder / str(number) / "train.log").read_text()
    # The sweep's log: each epoch's line gives the members' mean val/acc
    means = re.findall(r"epoch (\d+)  train/loss \S+  val/acc (\S+) \(means over (\d+) members\)", output)
    assert means, output[-3000:]
    for epoch, mean, count in means:
        rows = [next(row for row in csv.DictReader((run / "metrics.csv").open()) if row["epoch"] == epoch)
                for run in sorted(folder.iterdir()) if run.name.isdigit()]  # fmt: skip
        assert int(count) == len(rows) and float(mean) == pytest.approx(
            sum(float(row["val/acc"]) for row in rows) / len(rows), abs=5e-5
        )


def test_members_may_differ_in_width_zero_padded_to_the_widest(tmp_path: Path, capsys) -> None:
    """model.hidden of one depth: a member narrower than the widest is zero-padded to it, its padding's gradients
    held at zero, and it is its run alone (float64, 1e-9), checkpoints cut to its own shapes. Sigmoid, whose
    σ(0) = 0.5 reaches the padding's outgoing weights where no dropout mask zeroes it; with and without dropout
    (masks at the member's own width), weight decay, gradient clipping by norm and the gradient norms."""
    common = (
        "model.activation=sigmoid",
        "optimizer.weight_decay=0.1",
        "trainer.gradient_clip_val=0.5",
        "log_grad_norms=true",
        "seed=1",
    )
    folder = sweep(tmp_path, capsys, "model.hidden=[20,12],[30,8]", "model.dropout=0,0.2", *common)
    for number, (hidden, dropout) in enumerate((h, d) for h in ("[20,12]", "[30,8]") for d in (0, 0.2)):
        run = alone(tmp_path, f"alone{number}", f"model.hidden={hidden}", f"model.dropout={dropout}", *common)
        assert_same_run(folder / str(number), run)
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text()
        summaries = (json.loads((path / "summary.json").read_text()) for path in (folder / str(number), run))
        assert len({summary["parameters"] for summary in summaries}) == 1


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard log folder (all its event files): tag -> [(step, value)], in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_logger_tensorboard_gives_each_member_the_event_log_of_its_run_alone(tmp_path: Path, capsys) -> None:
    """logger=tensorboard: each member's own tensorboard/ folder, with its run alone's scalars (every tag, at
    the same steps, the same values) and hparams.yaml."""
    overrides = ("logger=tensorboard", "log_grad_norms=true")
    folder = sweep(tmp_path, capsys, *overrides, "seed=1,2")
    for number in (0, 1):
        run = alone(tmp_path, f"alone{number}", *overrides, f"seed={number + 1}")
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text()
        member, own = (tensorboard_scalars(path / "tensorboard") for path in (folder / str(number), run))
        assert {"train/loss", "val/acc", "test/acc", "lr-AdamW", "epoch"} <= own.keys()
        assert member.keys() == own.keys()
        for tag, events in own.items():
            assert [step for step, _ in member[tag]] == [step for step, _ in events], tag
            assert [value for _, value in member[tag]] == pytest.approx([value for _, value in events], rel=1e-6), tag
        hparams = [(path / "tensorboard" / "hparams.yaml").read_text() for path in (folder / str(number), run)]
        assert hparams[0] == hparams[1]


def test_report_landscape_keeps_each_members_path_through_weight_space_as_its_run_alone(tmp_path: Path, capsys) -> None:
    """report.landscape: each member keeps the points of its path (at its run alone's updates, its own weights,
    float64 to 1e-9, in its checkpoints), and its report draws landscape.png from them. Members of two widths."""
    folder = sweep(tmp_path, capsys, "report.landscape=pca", "report.enabled=true", "model.hidden=[20],[24]")
    for number in (0, 1):
        run = alone(tmp_path, f"alone{number}", "report.landscape=pca", f"model.hidden=[{20 + 4 * number}]")
        assert_same_run(folder / str(number), run)
        member, own = (
            torch.load(path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["WeightTrajectory"]
            for path in (folder / str(number), run)
        )
        assert member["updates"] == own["updates"] and len(own["updates"]) > 3
        torch.testing.assert_close(member["points"], own["points"], rtol=1e-9, atol=1e-9)
        assert (folder / str(number) / "landscape.png").is_file()
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text()


def test_each_member_goes_on_from_its_own_ckpt_path_as_its_run_alone(tmp_path: Path, capsys) -> None:
    """ckpt_path= per member: two runs' last.ckpt after 1 epoch, each the start of a member of a 2-epoch
    population in new directories, each member as its run alone from the same checkpoint (float64, 1e-9)."""
    starts = [alone(tmp_path, f"first{seed}", f"seed={seed}", "trainer.max_epochs=1") for seed in (1, 2)]
    checkpoints = [str(run / "checkpoints" / "last.ckpt") for run in starts]
    folder = sweep(tmp_path, capsys, f"ckpt_path={','.join(checkpoints)}")
    for number, checkpoint in enumerate(checkpoints):
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text()
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", f"ckpt_path={checkpoint}"))


def test_train_false_tests_each_members_checkpoint_as_its_run_alone(tmp_path: Path, capsys) -> None:
    """train=false ckpt_path=a,b: each member the network its checkpoint holds (here of other widths and
    activations than the command's), tested side by side; its files those of its run alone (float64, 1e-9)."""
    a = alone(tmp_path, "a", "model.hidden=[20]")
    b = alone(tmp_path, "b", "model.hidden=[30]", "model.activation=sigmoid", "seed=3")
    checkpoints = [a / "checkpoints" / "best.ckpt", b / "checkpoints" / "last.ckpt"]
    folder = sweep(tmp_path, capsys, "train=false", f"ckpt_path={checkpoints[0]},{checkpoints[1]}")
    for number, checkpoint in enumerate(checkpoints):
        member, run = (
            folder / str(number),
            alone(tmp_path, f"evaluated{number}", "train=false", f"ckpt_path={checkpoint}"),
        )
        log = (member / "train.log").read_text()
        assert "tested, with the other members of a population" in log and f"Testing the weights of {checkpoint}" in log
        assert ("differ in model.activation, model.hidden" in log) == (number == 1), log
        configs = [yaml.safe_load((path / "config.yaml").read_text()) for path in (member, run)]
        for key in ("model", "loss", "optimizer", "scheduler", "train", "ckpt_path"):
            assert configs[0][key] == configs[1][key], key
        rows = [epoch_values(path) for path in (member, run)]
        assert len(rows[0]) == len(rows[1]) and rows[0][-1].keys() == {"test/loss", "test/acc"}
        for row_a, row_b in zip(*rows):
            assert row_a == pytest.approx(row_b, rel=1e-9, abs=1e-9)
        summaries = [summary_of(path) for path in (member, run)]
        for key in ("status", "global_steps", "tested_checkpoint", "parameters", "epochs"):
            assert summaries[0][key] == summaries[1][key], key
        assert summaries[0]["test_acc"] == pytest.approx(summaries[1]["test_acc"], abs=1e-9)


def test_members_whose_checkpoints_stand_at_other_places_are_populations_of_their_own_the_log_says(
    tmp_path: Path, capsys
) -> None:
    """train=false ckpt_path=a,b with a after 2 epochs and b after 1: two populations, one log line naming them."""
    a, b = alone(tmp_path, "a"), alone(tmp_path, "b", "trainer.max_epochs=1")
    folder = tmp_path / "sweep"
    ckpt_paths = f"ckpt_path={a / 'checkpoints' / 'last.ckpt'},{b / 'checkpoints' / 'last.ckpt'}"
    arguments = ["-m", "hydra/launcher=population", "train=false", ckpt_paths, *SHORT, f"hydra.sweep.dir={folder}"]
    status, output = run_in_process("train.py", arguments, capsys)
    assert status == 0, output[-3000:]
    line = "The members' checkpoints stand at 2 places in training, each place a population of its own"
    assert f"{line} (epoch 1, update 140: 0; epoch 0, update 70: 1)." in output, output[-3000:]
    assert all(summary_of(folder / str(n))["status"] == "completed" for n in (0, 1))


def test_extra_callbacks_are_handed_to_a_populations_trainer_as_to_a_runs(tmp_path: Path) -> None:
    """train_population(cfgs, callbacks=...) as train(cfg, callbacks=...): Lightning calls them on the population's
    MLPSystem, whose records have a member axis (a run's: one member)."""
    from lightning.pytorch.callbacks import Callback

    from mlptrain.population_train import train_population

    class Epochs(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, bool, list[float]]] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation
            self.seen.append((trainer.current_epoch, pl_module.in_population, pl_module.last_val_acc.tolist()))

    members, alone_ = Epochs(), Epochs()
    cfgs = [compose_config([*SHORT, f"seed={seed}"], tmp_path / f"member{seed}") for seed in (1, 2)]
    values = train_population(cfgs, callbacks=[members])
    train(compose_config([*SHORT, "seed=2"], tmp_path / "alone"), callbacks=[alone_])
    assert [(epoch, population) for epoch, population, _ in members.seen] == [(0, True), (1, True)]
    assert [(epoch, population) for epoch, population, _ in alone_.seen] == [(0, False), (1, False)]
    assert [len(accuracies) for _, _, accuracies in members.seen] == [2, 2]
    assert values[1] == max(accuracies[1] for _, _, accuracies in members.seen)  # seed 2's best val/acc
    assert [accuracies[1] for _, _, accuracies in members.seen] == [acc[0] for _, _, acc in alone_.seen]


# The equality matrix: for every key in which members may differ (stacking.MEMBER_KEYS, MEMBER_KINDS,
# MEMBER_WIDTHS), a population of two members that differ in it, with what the key needs to matter. Each member
# must be its run alone (float64, 1e-9). ckpt_path and output_dir have tests of their own; dropout members of
# several seeds, each with its own generator, are in the SIGTERM and SIGKILL tests and the widths test.
MATRIX = {
    "seed": ("seed=1,2",),
    "data.shuffle_seed": ("data.shuffle_seed=3,4",),
    "model.init": ("model.init=xavier,normal",),
    "optimizer.lr": ("optimizer.lr=0.001,0.01",),
    "optimizer.weight_decay": ("optimizer.weight_decay=0,0.1",),
    "optimizer.momentum": ("optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.5,0.9"),
    "optimizer.betas": ("optimizer.betas=[0.9,0.999],[0.8,0.99]",),
    "optimizer.eps": ("+optimizer.eps=1e-8,1e-3",),
    "model.activation": ("model.activation=sigmoid,tanh",),
    "model.logistic_slope": ("model.activation=logistic", "model.logistic_slope=1,4"),
    "model.leaky_relu_slope": ("model.activation=leaky_relu", "model.leaky_relu_slope=0.01,0.3"),
    "model.output_activation": ("loss=mse", "model.output_activation=none,softmax"),
    "model.dropout": ("model.dropout=0,0.3",),
    "loss": ("loss=mse,cross_entropy",),
    "model.hidden": ("model.hidden=[20],[30]",),
}


def test_the_equality_matrix_has_a_case_for_every_key_members_may_differ_in() -> None:
    from mlptrain.stacking import MEMBER_KEYS, MEMBER_KINDS, MEMBER_WIDTHS

    assert set(MATRIX) == {*MEMBER_KEYS, *MEMBER_KINDS, *MEMBER_WIDTHS} - {"ckpt_path", "output_dir"}


@pytest.mark.parametrize("key", list(MATRIX))
def test_each_member_equals_its_run_alone_whatever_key_they_differ_in(tmp_path: Path, capsys, key: str) -> None:
    """One case of the matrix: two members differing in `key`, as one population, each its run alone."""
    *fixed, swept = MATRIX[key]
    name, _, values = swept.partition("=")
    jobs = [f"{name}={value}" for value in _sweep_values(values)]
    folder = sweep(tmp_path, capsys, *fixed, swept, "trainer.max_epochs=1")
    for number, job in enumerate(jobs):
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text(), job
        assert_same_run(
            folder / str(number), alone(tmp_path, f"alone{number}", *fixed, job, "trainer.max_epochs=1"), steps=70
        )


# Options that make a run alone take Lightning's loop, one mini-batch per training step, and that a population's
# engine makes as that loop does (training_path.member_path): members differing in seed and activation, each its
# run alone (float64, 1e-9), with the global steps each makes. Those only Lightning's loop can do
# (training_path.lightning_only) train on their own: test_jobs_that_cannot_be_stacked_...
LOOP_OPTIONS = {
    "steps_per_call=1": (("steps_per_call=1",), 140),
    "trainer.max_steps": (("steps_per_call=auto", "+trainer.max_steps=100", "log_grad_norms=true"), 100),
    "trainer.val_check_interval": (("steps_per_call=auto", "+trainer.val_check_interval=0.5"), 140),
    "gradient clipping, a step schedule": (
        ("steps_per_call=1", "trainer.gradient_clip_val=0.05", "scheduler=onecycle", "log_grad_norms=true"),
        140,
    ),
    "trainer.accumulate_grad_batches": (
        # 70 mini-batches an epoch: 23 updates of 3 and one of the last (5 examples), clipped and scheduled per update
        (
            "steps_per_call=auto",
            "+trainer.accumulate_grad_batches=3",
            "trainer.gradient_clip_val=0.05",
            "scheduler=onecycle",
            "log_grad_norms=true",
        ),
        48,
    ),
    "optimizer=any, its own step()": (
        # lr 0.001: at 0.01, a sigmoid member's RMSprop steps (g / sqrt(v)) grow the rounding by which its stacked
        # gradients differ from its run's (1e-16, float64) to 1e-7 within 45 updates, several mini-batches a step too
        ("steps_per_call=1", "optimizer=any", "optimizer._target_=torch.optim.RMSprop", "optimizer.lr=0.001"),
        140,
    ),
}


@pytest.mark.parametrize("option", list(LOOP_OPTIONS))
def test_a_population_makes_lightnings_loop_of_one_mini_batch_a_step_as_its_runs_alone(
    tmp_path: Path, capsys, option: str
) -> None:
    overrides, steps = LOOP_OPTIONS[option]
    folder = sweep(tmp_path, capsys, *overrides, "seed=1,2", "model.activation=sigmoid,relu")
    for number, (seed, activation) in enumerate((s, a) for s in (1, 2) for a in ("sigmoid", "relu")):
        log = (folder / str(number) / "train.log").read_text()
        assert "1 mini-batch per training step" in log and "with the other members of a population" in log, log
        job = (*overrides, f"seed={seed}", f"model.activation={activation}")
        assert choose_path(compose_config([*SHORT, *job], tmp_path / "path")).steps_per_call == 1  # alone: Lightning's
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *job), steps=steps)


def assert_members_are_runs_alone(
    tmp_path: Path, capsys, fixed: tuple[str, ...], swept: str, why: str, tolerance: float = 1e-9, steps: int = 140
) -> None:
    """`fixed` swept over `swept` (KEY=a,b) and model.activation=sigmoid,relu: one population of one mini-batch a
    step (the path's reason begins with `why`), each member its run alone (Lightning's loop)."""
    key, values = swept.split("=")
    folder = sweep(tmp_path, capsys, *fixed, swept, "model.activation=sigmoid,relu")
    jobs = [(f"{key}={value}", f"model.activation={a}") for value in values.split(",") for a in ("sigmoid", "relu")]
    for number, job in enumerate(jobs):
        log = (folder / str(number) / "train.log").read_text()
        assert f"1 mini-batch per training step ({why}" in log, log
        assert "with the other members of a population" in log, log
        run = alone(tmp_path, f"alone{number}", *fixed, *job)
        assert_same_run(folder / str(number), run, tolerance=tolerance, steps=steps)


def test_a_population_takes_a_dataloader_each_member_in_its_own_shuffle_as_its_run_alone(
    tmp_path: Path, capsys
) -> None:
    """data.loader=dataloader: one DataLoader serves every member's mini-batch at once (data.MemberBatches), each
    in its own data.shuffle_seed's order, one a training step; members differing in shuffle and activation equal
    their runs alone (Lightning's loop over their own DataLoaders). With dropout, a job trains on its own."""
    from mlptrain.stacking import stack_key

    fixed = ("data.loader=dataloader", "steps_per_call=auto")
    assert_members_are_runs_alone(tmp_path, capsys, fixed, "data.shuffle_seed=1,2", "data.loader=dataloader serves")
    key, why = stack_key(compose_config([*SHORT, *fixed, "model.dropout=0.2"], tmp_path / "dropout"))
    assert key is None and why.startswith("model.dropout with data.loader=dataloader: each pass"), why


@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["no dropout", "dropout"])
def test_a_population_in_bf16_mixed_precision_trains_as_its_runs_alone_to_bf16s_rounding(
    tmp_path: Path, capsys, dropout: float
) -> None:
    """trainer.precision=bf16-mixed: members train under the autocast Lightning puts around a training step, one
    mini-batch a step, as their runs alone in Lightning's loop. Not to 1e-9: a stack's bf16 matrix products
    (baddbmm) are not a single network's (linear), so their gradients differ in bf16's rounding. Measured on
    this test: weights within 1e-5 after 140 updates, losses within 6e-6, at most one image in 2000 classified
    otherwise; with dropout, each member's masks its run's."""
    fixed = ("steps_per_call=auto", "trainer.precision=bf16-mixed", f"model.dropout={dropout}")
    assert_members_are_runs_alone(tmp_path, capsys, fixed, "seed=1,2", "trainer.precision=bf16-mixed", 1e-3)


@pytest.mark.parametrize("target", ["torch.optim.RMSprop", "torch.optim.Adagrad"])
def test_an_optimizer_without_a_functional_update_trains_members_with_its_own_step(
    tmp_path: Path, capsys, target: str
) -> None:
    """optimizer=any: a class without a functional update here trains a run alone in Lightning's loop; members
    make each update with the optimizer's own step(), one optimizer per set of equal settings, and equal it."""
    fixed = ("optimizer=any", f"optimizer._target_={target}", "trainer.max_epochs=1")
    folder = sweep(tmp_path, capsys, *fixed, "optimizer.lr=0.001,0.01", "seed=1,2")
    for number, (lr, seed) in enumerate((lr, seed) for lr in (0.001, 0.01) for seed in (1, 2)):
        log = (folder / str(number) / "train.log").read_text()
        assert "so each update is its own step(), with the other members of a population" in log
        overrides = (*fixed, f"optimizer.lr={lr}", f"seed={seed}")
        assert choose_path(compose_config([*SHORT, *overrides], tmp_path / "any")).steps_per_call == 1  # alone
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *overrides), steps=70)


def _sweep_values(values: str) -> list[str]:
    """a,b or [a,b],[c,d]: the values of a sweep override, as Hydra splits them (top-level commas)."""
    parts, depth, current = [], 0, ""
    for char in values:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def test_a_member_whose_loss_becomes_nan_fails_alone_and_the_others_train_on(tmp_path: Path, capsys) -> None:
    folder = sweep(tmp_path, capsys, "optimizer=sgd", "scheduler=none", "seed=1", "optimizer.lr=0.1,1e30,0.2")
    failed = json.loads((folder / "1" / "summary.json").read_text())
    assert failed["status"] == "failed"
    assert "The training loss became NaN or infinite at epoch 0" in failed["error"]  # a run alone's message
    for number, lr in ((0, "0.1"), (2, "0.2")):
        run = alone(tmp_path, f"alone{number}", "optimizer=sgd", "scheduler=none", "seed=1", f"optimizer.lr={lr}")
        assert_same_run(folder / str(number), run)


def test_jobs_that_cannot_be_stacked_run_one_after_another_and_the_log_says_why(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "sweep"
    jobs = ["model.hidden=[20],[20,20]", "trainer.precision=64-true,16-mixed", "trainer.max_epochs=1"]
    short = [
        o for o in SHORT if not o.startswith(("model.hidden", "trainer.max_epochs", "steps_per_call", "trainer.pr"))
    ]
    arguments = ["-m", "hydra/launcher=population", *jobs, *short, f"hydra.sweep.dir={folder}"]
    status, output = run_in_process("train.py", arguments, capsys)
    assert status == 0, output[-3000:]
    assert "Jobs #1 #3 train on their own, not in a population: Lightning's loop, one mini-batch" in output, output
    assert (
        "The jobs make 2 populations, not one: they differ in model.hidden (the depth: 1 and 2 hidden layers)" in output
    ), output
    for number in range(4):
        summary = json.loads((folder / str(number) / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert "with the other members" not in (folder / str(number) / "train.log").read_text()
    status, output = run_in_process("scripts/report.py", [str(folder)], capsys)
    assert status == 0 and (folder / "sweep_report.md").is_file(), output


@pytest.mark.parametrize(
    ("setting", "paragraph", "keys"),
    [
        ("+trainer.no_such_argument=1", "The trainer config is not valid", "trainer.*"),
        ("+optimizer.no_such_argument=1", "The optimizer could not be built", "optimizer._target_"),
    ],
    ids=["trainer", "optimizer"],
)
def test_a_setting_lightning_or_torch_refuses_is_one_paragraph_for_every_member(
    setting: str, paragraph: str, keys: str, tmp_path: Path, capsys
) -> None:
    """As a run's: the paragraph, in the sweep's log and each member's, no traceback, and a sweep none of whose
    jobs completed exits 1."""
    folder = tmp_path / "sweep"
    arguments = ["-m", "hydra/launcher=population", setting, "seed=1,2", *SHORT]
    status, output = run_in_process("train.py", [*arguments, f"hydra.sweep.dir={folder}"], capsys)
    assert status == 1 and paragraph in output and "Traceback" not in output, output
    for number in (0, 1):
        log = (folder / str(number) / "train.log").read_text()
        assert paragraph in log and keys in log, log
        assert "Traceback" not in log
        assert not (folder / str(number) / "summary.json").exists()


@pytest.mark.parametrize("flag", DEBUG_FLAGS)
def test_lightnings_debugging_flags_run_a_population(flag: str, tmp_path: Path, capsys) -> None:
    """As they run a run (tests/test_records.py): with fast_dev_run, Lightning saves no checkpoint, so no member's
    best.ckpt may be named, nor tested. val_check_interval counts training steps: one mini-batch each."""
    path = ("steps_per_call=auto",) if "val_check_interval" in flag else ()
    folder = sweep(tmp_path, capsys, flag, *path, "seed=1,2")
    for member in (folder / "0", folder / "1"):
        result = summary_of(member)
        assert result["status"] == "completed"
        assert csv_histories(member)["test/acc"][-1][1] == result["test_acc"]


def test_a_population_is_at_most_max_members_and_one_left_over_runs_alone(tmp_path: Path, capsys) -> None:
    folder = sweep(tmp_path, capsys, "hydra.launcher.max_members=2", "seed=1,2,3", "trainer.max_epochs=1")
    for number in (0, 1, 2):
        assert json.loads((folder / str(number) / "summary.json").read_text())["status"] == "completed"
        together = "with the other members of a population" in (folder / str(number) / "train.log").read_text()
        assert together == (number < 2)
    status, output = run_in_process("scripts/report.py", [str(folder)], capsys)  # one row per job
    assert status == 0, output
    assert len((folder / "sweep_jobs.csv").read_text().strip().splitlines()) == 1 + 3


def test_a_member_with_a_value_out_of_range_is_refused_alone(tmp_path: Path, capsys) -> None:
    """Only the first job's config is composed: a member's own value is still checked, as its run alone's."""
    folder = tmp_path / "sweep"
    status, output = run_in_process(
        "train.py",
        ["-m", "hydra/launcher=population", "optimizer.lr=0.1,-1.0", *SHORT, "trainer.max_epochs=1",
         f"hydra.sweep.dir={folder}"],
        capsys,
    )  # fmt: skip
    assert status == 0, output[-3000:]
    assert "optimizer.lr=-1.0 is out of range" in output
    assert json.loads((folder / "0" / "summary.json").read_text())["status"] == "completed"
    assert not (folder / "1" / "summary.json").exists()


@pytest.mark.parametrize(
    ("loop", "updates"),
    [(("steps_per_call=1",), 140), (("steps_per_call=auto", "+trainer.accumulate_grad_batches=3"), 48)],
    ids=["steps_per_call=1", "accumulate_grad_batches=3"],  # 3: stopped with 2 of an update's mini-batches summed
)
def test_a_population_of_one_mini_batch_a_step_stopped_by_sigterm_resumes_to_its_runs_alone(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, loop: tuple[str, ...], updates: int
) -> None:
    """One mini-batch a training step (a run alone: Lightning's loop): SIGTERM in the middle of epoch 1 writes every
    member's last.ckpt there, and resume=auto finishes each to its run alone, dropout masks and all, and with
    accumulation the gradients summed toward the update it stopped within."""
    import os
    import signal

    from mlptrain.system import MLPSystem

    calls: list[int] = []
    original = MLPSystem.training_step

    def step_then_stop(self: MLPSystem, batch: object, batch_idx: int) -> None:
        calls.append(batch_idx)
        if len(calls) == 75:  # epoch 1's fifth mini-batch (70 an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MLPSystem, "training_step", step_then_stop)
    overrides = (*loop, "model.dropout=0.2", "model.activation=sigmoid,relu")
    folder = sweep(tmp_path, capsys, *overrides, ends=1)
    for number in (0, 1):
        saved = torch.load(folder / str(number) / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["MNISTDataModule"] == {"epoch": 1, "batches_done": 5}
        assert ("summed_gradients" in saved) == (updates == 48)
    monkeypatch.setattr(MLPSystem, "training_step", original)
    sweep(tmp_path, capsys, *overrides, "resume=auto")
    for number, activation in enumerate(("sigmoid", "relu")):
        job = (*loop, "model.dropout=0.2", f"model.activation={activation}")
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text()
        assert_same_run(folder / str(number), alone(tmp_path, f"alone{number}", *job), steps=updates)


@pytest.mark.parametrize("again", ["resume=auto", "requeued"])
def test_sigterm_checkpoints_every_member_and_the_sweep_resumes(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, again: str
) -> None:
    """SIGTERM in epoch 1 writes every member's last.ckpt where training stopped, in a run's own format: a run
    alone resumes from it, and so does the sweep, each member to its uninterrupted result: with resume=auto, or
    as SLURM starts a preempted job again (the same command; SLURM_RESTART_COUNT says it is a requeue)."""
    import os
    import signal

    from mlptrain.system import MLPSystem

    calls: list[int] = []
    original = MLPSystem.training_step

    def step_then_stop(self: MLPSystem, batch: object, batch_idx: int) -> None:
        calls.append(batch_idx)
        if len(calls) == 6:  # epoch 1's second training step (4 an epoch)
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster's preemption sends it: to the process
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MLPSystem, "training_step", step_then_stop)
    overrides = ("optimizer=sgd", "optimizer.lr=0.02", "optimizer.momentum=0.9", "scheduler=none", "model.dropout=0.2")
    overrides += ("logger=tensorboard",)
    folder = sweep(tmp_path, capsys, *overrides, "seed=1,2", ends=1)  # as an interrupted run ends
    for number in (0, 1):
        assert json.loads((folder / str(number) / "summary.json").read_text())["status"] == "interrupted"
        saved = torch.load(folder / str(number) / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["MNISTDataModule"] == {"epoch": 1, "batches_done": 40}
    monkeypatch.setattr(MLPSystem, "training_step", original)
    runs = [alone(tmp_path, f"alone{number}", *overrides, f"seed={number + 1}") for number in (0, 1)]
    # Member 1, resumed in its directory by a run of its own (the same config): the run that was never stopped.
    train(compose_config([*SHORT, *overrides, "seed=2", "resume=auto"], folder / "1"))
    assert_same_run(folder / "1", runs[1])
    # The same command, the same folder: member 0 resumes; member 1, complete, is left as it is.
    finished = (folder / "1" / "summary.json").stat().st_mtime_ns
    if again == "requeued":
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    sweep(tmp_path, capsys, *overrides, "seed=1,2", *(["resume=auto"] if again == "resume=auto" else []))
    assert (folder / "1" / "summary.json").stat().st_mtime_ns == finished
    for number in (0, 1):
        assert_same_run(folder / str(number), runs[number])
    # Member 0's TensorBoard log, written before and after the stop, holds its uninterrupted run's scalars once.
    member, own = (tensorboard_scalars(path / "tensorboard") for path in (folder / "0", runs[0]))
    assert {tag: [step for step, _ in events] for tag, events in member.items()} == {
        tag: [step for step, _ in events] for tag, events in own.items()
    }


def test_an_optuna_search_trains_each_batch_of_trials_as_a_population(tmp_path: Path, capsys) -> None:
    """hparams_search=optuna with n_jobs=4: the sweeper hands the launcher 4 trials at once, drawn from the default
    space but for its batch size (a choice that would split them), differing in learning rate, weight decay,
    activation and dropout: they train as one population, and Optuna is told each trial's own best val/acc."""
    folder = tmp_path / "sweep"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4"]
    arguments = ["-m", "hydra/launcher=population", *search, "optimizer.lr=interval(0.001,0.01)", *SHORT]
    status, output = run_in_process("train.py", [*arguments, f"hydra.sweep.dir={folder}"], capsys)
    assert status == 0 and "Population of 4 jobs, trained together" in output, output[-3000:]
    summaries = [json.loads((folder / str(number) / "summary.json").read_text()) for number in range(4)]
    assert [summary["status"] for summary in summaries] == ["completed"] * 4
    for number in range(4):
        assert "with the other members of a population" in (folder / str(number) / "train.log").read_text()
    configs = [yaml.safe_load((folder / str(number) / "config.yaml").read_text()) for number in range(4)]
    assert len({config["model"]["activation"] for config in configs}) > 1  # kinds, in one population
    assert len({config["model"]["dropout"] for config in configs}) == 4
    results = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(summary["best_val_acc"] for summary in summaries))


def test_a_population_killed_then_resumed_gives_each_member_its_uninterrupted_run(tmp_path: Path, capsys) -> None:
    """SIGKILL (no handler, no last word) once the members have written their first epoch; the same command with
    resume=auto then finishes each member from its own last.ckpt, as if nothing had happened. The members differ
    in width: the narrower's checkpoint, its own shape, is zero-padded again to resume."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    folder = tmp_path / "sweep"
    longer = ("data.train_size=5000", "trainer.max_epochs=4", "optimizer=sgd", "scheduler=none", "model.dropout=0.2")
    short = [override for override in SHORT if not override.startswith("model.hidden")]
    arguments = [*short, *longer, "model.hidden=[20],[24]", f"hydra.sweep.dir={folder}"]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=population", *arguments],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first_epoch = folder / "1" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (folder / "0" / "summary.json").exists(), "the kill came after the sweep had finished"
    sweep(tmp_path, capsys, *longer, "model.hidden=[20],[24]", "resume=auto")
    for number in (0, 1):
        run = alone(tmp_path, f"alone{number}", *longer, f"model.hidden=[{20 + 4 * number}]")
        assert_same_run(folder / str(number), run, steps=2000)
