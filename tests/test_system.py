import itertools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mlptrain.config import check
from mlptrain.data import MNISTDataModule
from mlptrain.errors import ConfigError, NonFiniteLossError
from mlptrain.losses import make_loss
from mlptrain.system import TRAINING_STATES, MemberAccuracy, MemberMean, MLPSystem, upgrade
from tests.conftest import compose_config

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}


def system(**changes: object) -> MLPSystem:
    args = {
        "model": {"hidden": [16]},
        "loss": {"name": "cross_entropy"},
        "optimizer": SGD,
        "scheduler": {"name": "none"},
    }
    args.update(changes)
    return MLPSystem(**args)  # type: ignore[arg-type]


def test_mse_reductions_have_the_documented_scales() -> None:
    output = torch.zeros(4, 10)  # against a one-hot target: squared error 1 per example
    labels = torch.tensor([0, 3, 9, 9])
    assert make_loss("mse", "half_sum")(output, labels).item() == pytest.approx(0.5)
    assert make_loss("mse", "sum")(output, labels).item() == pytest.approx(1.0)
    assert make_loss("mse", "mean")(output, labels).item() == pytest.approx(0.1)


def test_half_sum_is_nielsens_quadratic_cost() -> None:
    output, labels = torch.rand(6, 10, dtype=torch.float64), torch.randint(0, 10, (6,))
    y = F.one_hot(labels, 10).double()
    nielsen = sum(0.5 * torch.linalg.vector_norm(y[i] - output[i]) ** 2 for i in range(6)) / 6
    assert make_loss("mse", "half_sum")(output, labels).item() == pytest.approx(nielsen.item(), rel=1e-12)


def test_cross_entropy_is_negative_log_softmax() -> None:
    logits, labels = torch.randn(5, 10), torch.randint(0, 10, (5,))
    expected = -torch.log_softmax(logits, -1)[torch.arange(5), labels].mean()
    assert make_loss("cross_entropy")(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_binary_cross_entropy_is_nielsens_network2_cost() -> None:
    a, labels = torch.rand(6, 10, dtype=torch.float64) * 0.98 + 0.01, torch.randint(0, 10, (6,))
    y = F.one_hot(labels, 10).double()
    nielsen = sum(torch.sum(-y[i] * torch.log(a[i]) - (1 - y[i]) * torch.log(1 - a[i])) for i in range(6)) / 6
    loss = make_loss("binary_cross_entropy")(a, labels)
    assert loss.item() == pytest.approx(nielsen.item(), rel=1e-12)


@pytest.mark.parametrize("output_activation", ["none", "sigmoid", "softmax"])
@pytest.mark.parametrize(
    "loss", [{"name": "cross_entropy"}, {"name": "mse", "reduction": "half_sum"}, {"name": "binary_cross_entropy"}]
)
def test_every_loss_and_output_combination(loss: dict, output_activation: str, tmp_path: Path) -> None:
    needs = {"cross_entropy": "none", "binary_cross_entropy": "sigmoid"}.get(loss["name"], output_activation)
    cfg = compose_config([f"loss={loss['name']}", f"model.output_activation={output_activation}"], tmp_path)
    if needs != output_activation:  # the schema's rule refuses it before anything is built
        with pytest.raises(ConfigError, match=f"model.output_activation={needs}"):
            check(cfg)
        return
    check(cfg)
    model = system(model={"hidden": [8], "output_activation": output_activation}, loss=loss)
    x, y = torch.rand(4, 784), torch.tensor([1, 2, 3, 4])
    loss_value = model.training_step((x, y), 0)
    loss_value.backward()
    a, target = model(x).detach(), F.one_hot(y, 10).double()  # the costs as the notes write them
    expected = {
        "cross_entropy": -a.log_softmax(-1)[range(4), y].mean(),
        "mse": 0.5 * (a - target).square().sum(-1).mean(),
        "binary_cross_entropy": -(target * a.log() + (1 - target) * (1 - a).log()).sum(-1).mean(),
    }[loss["name"]]
    assert loss_value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())  # the gradient reaches every layer


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"optimizer": {**SGD, "nesterov": True}}, "Nesterov"),
        ({"optimizer": {**SGD, "_target_": "torch.optim.Nope"}}, "optimizer._target_=torch.optim.Nope"),
        ({"optimizer": {**SGD, "betas": [0.9, 0.99]}}, "unexpected keyword argument 'betas'"),
    ],
)
def test_an_optimizer_that_cannot_be_built(changes: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        system(**changes)


def _trainer(tmp_path: Path, **kwargs: object) -> L.Trainer:
    args = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "limit_train_batches": 20,
        "limit_val_batches": 2,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "default_root_dir": tmp_path,
    }
    args.update(kwargs)
    return L.Trainer(**args)  # type: ignore[arg-type]


class _RecordLearningRates(L.Callback):
    def __init__(self) -> None:
        self.used: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.used.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_schedulers_set_the_learning_rate_of_every_step(tmp_path: Path) -> None:
    """2 epochs of 20 steps from optimizer.lr = 0.1; the lr each step actually used."""
    schedules = {}
    for scheduler in (
        {"name": "none"},
        {"name": "cosine", "min_lr": 0.0},
        {"name": "step", "step_size": 1, "gamma": 0.5},
        {"name": "onecycle", "pct_start": 0.3},
    ):
        record = _RecordLearningRates()
        _trainer(tmp_path / scheduler["name"], callbacks=[record]).fit(
            system(scheduler=scheduler), datamodule=MNISTDataModule(batch_size=32)
        )
        schedules[scheduler["name"]] = record.used
    assert schedules["none"] == [0.1] * 40
    cosine = schedules["cosine"]
    assert cosine[0] == 0.1 and cosine[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 39 / 40)) / 2)
    assert all(a > b for a, b in itertools.pairwise(cosine))
    assert schedules["step"] == [0.1] * 20 + [0.05] * 20
    onecycle = schedules["onecycle"]
    assert onecycle[0] == pytest.approx(0.1 / 25)  # OneCycleLR starts at max_lr / div_factor
    assert max(onecycle) == pytest.approx(0.1) and onecycle.index(max(onecycle)) == 11  # 30% of 40 steps
    assert onecycle[-1] == pytest.approx(0.1 / 25 / 1e4)


class _PoisonWeights(L.Callback):
    """Makes the network output NaN from the start of the second epoch."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.model.layers[0].weight[0, 0] = float("nan")


def test_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[_PoisonWeights(), checkpoint])
    model = system(check_finite_every_n_steps=5)
    with pytest.raises(NonFiniteLossError, match="at epoch 1, global step 20"):
        trainer.fit(model, datamodule=MNISTDataModule(batch_size=32))
    assert trainer.global_step == 25  # stopped at the first check after the NaN, not at the end of the epoch
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_predict_returns_outputs_and_predicted_digits(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, limit_predict_batches=2)
    batches = trainer.predict(system(), datamodule=MNISTDataModule(eval_batch_size=100))
    assert len(batches) == 2 and batches[0]["output"].shape == (100, 10)
    assert torch.equal(batches[0]["pred"], batches[0]["output"].argmax(-1))


def test_member_metrics_keep_each_member_as_a_run_of_one_keeps_its_own() -> None:
    """A population's metrics (N members) and a run's (one) are the same code: each member's value is what it
    would be alone, and the example-weighted mean of its mini-batches' values."""
    torch.manual_seed(0)
    losses = torch.rand(3, 5, dtype=torch.float64)  # 3 members, 5 mini-batches
    sizes = torch.tensor([4.0, 4.0, 4.0, 4.0, 2.0], dtype=torch.float64)
    predicted, labels = torch.randint(0, 10, (3, 18)), torch.randint(0, 10, (18,))
    together, correct = MemberMean(3), MemberAccuracy(3)
    together.update(losses, sizes)
    correct.update(predicted, labels)
    for m in range(3):
        alone, alone_correct = MemberMean(), MemberAccuracy()
        alone.update(losses[m : m + 1], sizes)
        alone_correct.update(predicted[m : m + 1], labels)
        assert together.compute()[m] == alone.compute() == (losses[m] * sizes).sum() / sizes.sum()
        assert correct.compute()[m] == alone_correct.compute() == (predicted[m] == labels).float().mean()


def test_a_checkpoint_written_before_the_member_axis_loads_as_one_member() -> None:
    """Checkpoints written before the metrics' member axis hold a run's training sums as scalars, and older ones
    torchmetrics' accuracy counts (tp, fp, tn, fn): `upgrade` gives both as MemberMean's and MemberAccuracy's."""
    run = system()
    run.train_loss.update(torch.tensor([[0.5, 1.5]]), torch.tensor([2.0, 6.0], dtype=torch.float64))
    run.train_acc.update(torch.tensor([[1, 2, 3, 4]]), torch.tensor([1, 2, 0, 0]))
    state = run.state_dict()
    assert {key: tuple(state[key].shape) for key in TRAINING_STATES} == dict.fromkeys(TRAINING_STATES, (1,))
    scalars = {**state, **{key: state[key].view(()) for key in TRAINING_STATES}}
    counts = {key: value for key, value in scalars.items() if not key.startswith("train_acc.")}
    counts.update({"train_acc.tp": torch.tensor([2]), "train_acc.fn": torch.tensor([2]),
                   "train_acc.fp": torch.tensor([2]), "train_acc.tn": torch.tensor([34])})  # fmt: skip
    for old in (scalars, counts):
        again = system()
        again.load_state_dict(upgrade({key: value.clone() for key, value in old.items()}))
        again.train_loss.update(torch.tensor([[1.0]]), torch.tensor([2.0], dtype=torch.float64))  # the epoch goes on
        again.train_acc.update(torch.tensor([[5, 6]]), torch.tensor([5, 6]))
        assert float(again.train_loss.compute()) == (0.5 * 2 + 1.5 * 6 + 1.0 * 2) / 10
        assert again.train_acc.compute() == torch.tensor(4 / 6)  # float32, as torchmetrics computes it
