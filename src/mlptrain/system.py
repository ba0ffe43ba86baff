"""The LightningModule around the MLP: loss, accuracy, optimizer and learning-rate schedule."""

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.optim import Optimizer
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mlptrain.errors import ConfigError, NonFiniteLossError
from mlptrain.model import MLP

LOSSES = ("cross_entropy", "mse", "binary_cross_entropy")
MSE_REDUCTIONS = ("half_sum", "sum", "mean")
SCHEDULERS = ("none", "cosine", "step", "onecycle")
COMPILED_OPTIMIZERS = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW")  # compile_steps
STAGES = ("train", "val", "test")

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(name: str, reduction: str = "half_sum", output_activation: str = "none") -> LossFn:
    """loss(output (B, 10), labels (B,)) -> scalar, averaged over the B examples.

    mse compares the output with the one-hot target y; per example, with a = output:
      half_sum: ½ Σ_j (a_j - y_j)²   Nielsen's quadratic cost C = 1/2n Σ_x ‖y(x) - a‖²
      sum:        Σ_j (a_j - y_j)²   3Blue1Brown's cost, twice the above
      mean:   1/10 Σ_j (a_j - y_j)²  PyTorch's F.mse_loss (mean over every element)
    cross_entropy is softmax cross-entropy on logits, so the output layer must be `none`.
    binary_cross_entropy is Nielsen's network2 cost on sigmoid outputs, summed over the 10 outputs:
      -Σ_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)], so the output layer must be `sigmoid`.
    """
    if name == "cross_entropy":
        if output_activation != "none":
            raise ConfigError(
                f"loss=cross_entropy takes logits and applies its own log-softmax, so it needs "
                f"model.output_activation=none (got {output_activation!r}). Set "
                f"model.output_activation=none, or use loss=mse with a {output_activation} output."
            )
        return F.cross_entropy
    if name == "binary_cross_entropy":
        if output_activation != "sigmoid":
            raise ConfigError(
                f"loss=binary_cross_entropy compares each output with 0 or 1, so it needs "
                f"model.output_activation=sigmoid (got {output_activation!r})."
            )

        def binary_cross_entropy(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            target = F.one_hot(labels, output.shape[-1]).to(output.dtype)
            return F.binary_cross_entropy(output, target, reduction="sum") / len(labels)

        return binary_cross_entropy
    if name != "mse":
        raise ConfigError(f"loss={name!r} is not known. Use one of: {', '.join(LOSSES)}.")
    if reduction not in MSE_REDUCTIONS:
        raise ConfigError(
            f"loss.reduction={reduction!r} is not known. Use one of: {', '.join(MSE_REDUCTIONS)} "
            "(half_sum is Nielsen's quadratic cost ½‖a−y‖² averaged over examples)."
        )
    scale = {"half_sum": 0.5, "sum": 1.0, "mean": 0.1}[reduction]

    def mse(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(labels, output.shape[-1]).to(output.dtype)  # (B, 10)
        if reduction == "mean":
            return F.mse_loss(output, target)
        return scale * (output - target).square().sum(-1).mean()

    return mse


def _check_positive(key: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"{key} must be a positive number, got {value!r}.")


class MLPSystem(L.LightningModule):
    """Trains an `MLP` and reports `train/loss`, `train/acc`, `val/loss`, `val/acc`, `test/loss`, `test/acc`.

    Every argument is a plain dict of the config group of the same name, so the hyperparameters
    saved in checkpoints rebuild the run with `MLPSystem.load_from_checkpoint(path)`.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        check_finite_every_n_steps: int = 50,
        log_grad_norms: bool = False,
        steps_per_call: int = 1,
        compile_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = MLP(**model)
        self.loss_fn = make_loss(**loss, output_activation=model.get("output_activation", "none"))
        self.optimizer_factory = self._optimizer_factory(optimizer)
        self._check_scheduler(scheduler)
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self.log_grad_norms = log_grad_norms
        # K > 1: each training step gets K mini-batches and makes K updates itself (manual optimization),
        # the same updates in the same order as K automatic steps, without Lightning's per-step overhead.
        self.steps_per_call = steps_per_call
        self.automatic_optimization = steps_per_call == 1
        self.compile_steps = compile_steps
        self._check_compile_steps(optimizer)
        self._compiled: Callable[..., Any] | None = None
        for stage in STAGES:
            # nan_strategy/validate_args off: their checks pull a value to the host every step.
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=10, average="micro", validate_args=False))
        # The training metrics' running sums go into checkpoints, so an epoch resumed midway reports
        # the same train/loss and train/acc as one that ran through.
        self.train_loss.persistent(True)
        self.train_acc.persistent(True)
        # Epoch and global step of the first non-finite training loss, -1 while none: kept on the
        # device and read only every check_finite_every_n_steps steps and before checkpoints.
        self.register_buffer("nonfinite_epoch", torch.tensor(-1), persistent=False)
        self.register_buffer("nonfinite_step", torch.tensor(-1), persistent=False)

    def _optimizer_factory(self, optimizer: Mapping[str, Any]) -> Callable[..., Optimizer]:
        if "lr" in optimizer:
            _check_positive("optimizer.lr", optimizer["lr"])
        for key in ("weight_decay", "momentum"):
            value = optimizer.get(key, 0)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise ConfigError(f"optimizer.{key} must be a number >= 0, got {value!r}.")
        try:
            factory = instantiate(optimizer)
            factory(self.model.parameters())  # build one now, so a bad combination fails before any data is read
        except Exception as error:
            raise ConfigError(
                f"The optimizer could not be built from {dict(optimizer)}: {error}. Use optimizer=sgd, "
                "adam or adamw with valid values, or a `_target_` naming a torch.optim class with `_partial_: true`."
            ) from error
        return factory

    def _check_compile_steps(self, optimizer: Mapping[str, Any]) -> None:
        if self.compile_steps == 0:
            return
        if not (isinstance(self.compile_steps, int) and self.compile_steps > 0):
            raise ConfigError(f"compile_steps must be 0 (off) or a positive integer, got {self.compile_steps!r}.")
        if self.steps_per_call % self.compile_steps:
            raise ConfigError(
                f"compile_steps={self.compile_steps} must divide steps_per_call={self.steps_per_call}: each "
                "training step runs its mini-batches in compiled groups of compile_steps."
            )
        kind = optimizer.get("_target_")
        unsupported = [key for key in ("dampening", "amsgrad", "maximize") if optimizer.get(key)]
        if kind not in COMPILED_OPTIMIZERS or unsupported:
            raise ConfigError(
                "compile_steps compiles the updates of SGD (momentum, Nesterov, weight decay), Adam and AdamW "
                f"(not dampening, amsgrad or maximize); this config has {kind} {' '.join(unsupported)}. Use "
                "optimizer=sgd, adam or adamw, or compile_steps=0."
            )
        if self.log_grad_norms:
            raise ConfigError("compile_steps does not log gradient norms: set log_grad_norms=false or compile_steps=0.")

    def _state_keys(self, torch_optimizer: Optimizer) -> tuple[str, ...]:
        """The optimizer's per-parameter state tensors that the compiled updates carry along."""
        if self.hparams.optimizer["_target_"] == "torch.optim.SGD":
            return ("momentum_buffer",) if torch_optimizer.param_groups[0]["momentum"] else ()
        return ("exp_avg", "exp_avg_sq")

    def _update(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], state: list[list[torch.Tensor]], s: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """One optimizer step as a pure function, computed as torch.optim's single-tensor code computes it.

        `state` holds one list per _state_keys() entry; `s` this step's scalars from _step_scalars(), which
        follow the schedule (OneCycleLR also cycles SGD's momentum and Adam's beta1).
        """
        config = self.hparams.optimizer
        decay, kind = config.get("weight_decay", 0.0), config["_target_"]
        if decay and kind == "torch.optim.AdamW":  # decoupled: the weights shrink
            params = [p * (1 - s[0] * decay) for p in params]
        elif decay:  # SGD and Adam: an L2 term added to the gradient
            grads = [g + decay * p for g, p in zip(grads, params)]
        if kind == "torch.optim.SGD":  # s = (lr, momentum); buf = momentum buf + g; p -= lr (g + momentum buf | buf)
            if state:
                state = [[s[1] * b + g for b, g in zip(state[0], grads)]]
                grads = [g + s[1] * b for g, b in zip(grads, state[0])] if config.get("nesterov") else state[0]
            return [p - s[0] * g for p, g in zip(params, grads)], state
        # Adam / AdamW: s = (lr, lr / (1 - beta1^t), sqrt(1 - beta2^t), beta1, beta2) for this step t.
        eps = config.get("eps", 1e-8)
        exp_avg = [m.lerp(g, 1 - s[3]) for m, g in zip(state[0], grads)]
        exp_avg_sq = [v * s[4] + (1 - s[4]) * g * g for v, g in zip(state[1], grads)]
        params = [p - s[1] * (m / (v.sqrt() / s[2] + eps)) for p, m, v in zip(params, exp_avg, exp_avg_sq)]
        return params, [exp_avg, exp_avg_sq]

    def _step_scalars(self, torch_optimizer: Optimizer, scheduler: Any, steps: int) -> list[list[float]]:
        """The coming steps' scalars, as the optimizer would read them step by step; steps the scheduler."""
        group = torch_optimizer.param_groups[0]
        sgd = self.hparams.optimizer["_target_"] == "torch.optim.SGD"
        done = 0 if sgd else int(torch_optimizer.state[self.model.layers[0].weight]["step"])
        rows = []
        for i in range(steps):
            if sgd:
                rows.append([group["lr"], group["momentum"]])
            else:
                (beta1, beta2), t = group["betas"], done + i + 1
                rows.append([group["lr"], group["lr"] / (1 - beta1**t), (1 - beta2**t) ** 0.5, beta1, beta2])
            if scheduler is not None:
                with warnings.catch_warnings():  # it looks for optimizer.step() calls, which compiled steps do not make
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                    scheduler.step()
        return rows

    def _functional_steps(
        self,
        params: list[torch.Tensor],
        state: list[list[torch.Tensor]],
        xs: torch.Tensor,
        ys: torch.Tensor,
        scalars: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], torch.Tensor, torch.Tensor]:
        """compile_steps updates as one pure function, for torch.compile: xs (C, B, 784), ys (C, B), scalars
        (C, k). Returns the new parameters and optimizer state, the C losses and outputs (C, B, 10)."""
        names = [name for name, _ in self.model.named_parameters()]

        def loss_of(values: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            output = torch.func.functional_call(self.model, dict(zip(names, values)), (x,))
            return self.loss_fn(output, y), output

        losses, outputs = [], []
        for i in range(xs.shape[0]):
            grads, (loss, output) = torch.func.grad_and_value(loss_of, has_aux=True)(params, xs[i], ys[i])
            params, state = self._update(params, grads, state, scalars[i])
            losses.append(loss.detach())
            outputs.append(output.detach())
        return params, state, torch.stack(losses), torch.stack(outputs)

    def _compiled_group(self, optimizer: Any, xs: torch.Tensor, ys: torch.Tensor, scheduler: Any) -> Any:
        """Run compile_steps mini-batches xs (C, B, 784), ys (C, B) as one compiled call and return (losses (C,),
        outputs (C, B, 10), labels (C, B)); None where it cannot, and then nothing has changed (run them eagerly)."""
        torch_optimizer = optimizer.optimizer
        params = list(self.model.parameters())
        keys = self._state_keys(torch_optimizer)
        if any(key not in torch_optimizer.state.get(p, {}) for p in params for key in keys):
            return None  # the optimizer's first step creates its state
        state = [[torch_optimizer.state[p][key] for p in params] for key in keys]
        schedule = scheduler.state_dict() if scheduler is not None else None
        hyper = {
            key: torch_optimizer.param_groups[0][key]
            for key in ("lr", "momentum", "betas")
            if key in torch_optimizer.param_groups[0]
        }
        rows = self._step_scalars(torch_optimizer, scheduler, len(xs))
        if self._compiled is None:
            self._compiled = torch.compile(self._functional_steps, fullgraph=True)
        scalars = torch.tensor(rows, dtype=params[0].dtype, device=self.device)
        try:
            new_params, new_state, losses, outputs = self._compiled(
                [p.detach() for p in params], [[t.detach() for t in ts] for ts in state], xs, ys, scalars
            )
        except Exception as error:  # no C++ compiler, an unsupported platform, ...: train on, eagerly
            log.warning("torch.compile failed (%s); compile_steps is off for the rest of this run.", error)
            self.compile_steps = 0
            if scheduler is not None:  # undo the scheduler steps taken above
                scheduler.load_state_dict(schedule)
                torch_optimizer.param_groups[0].update(hyper)
            return None
        with torch.no_grad():
            for p, new in zip(params, new_params):
                p.copy_(new)
            for old_tensors, new_tensors in zip(state, new_state):
                for old, new in zip(old_tensors, new_tensors):
                    old.copy_(new)
            if "exp_avg" in keys:
                for p in params:
                    torch_optimizer.state[p]["step"] += len(xs)
        for _ in range(len(xs)):
            optimizer._on_before_step()
            optimizer._on_after_step()
        return losses, outputs, ys

    @staticmethod
    def _check_scheduler(scheduler: Mapping[str, Any]) -> None:
        name = scheduler.get("name")
        if name not in SCHEDULERS:
            raise ConfigError(f"scheduler.name={name!r} is not known. Use one of: {', '.join(SCHEDULERS)}.")
        for key in ("step_size", "gamma"):
            if key in scheduler:
                _check_positive(f"scheduler.{key}", scheduler[key])
        if "pct_start" in scheduler and not 0 < scheduler["pct_start"] < 1:
            raise ConfigError(f"scheduler.pct_start must be in (0, 1), got {scheduler['pct_start']!r}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        output = self.model(x)  # (B, 10)
        loss = self.loss_fn(output, y)
        # Weighted by batch size, so the epoch value is the mean over examples; the weight is made on the
        # device because a Python number would be copied to the GPU, a synchronising copy every step.
        getattr(self, f"{stage}_loss").update(loss.detach(), torch.full_like(loss.detach(), len(y)))
        getattr(self, f"{stage}_acc").update(output.detach().argmax(-1), y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        for name in ("loss", "acc"):
            metric = getattr(self, f"{stage}_{name}")
            self.log(f"{stage}/{name}", metric.compute())
            metric.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._train_loss(batch)
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers() if self.scheduler_interval == "step" else None
        first_step = self.global_step
        results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (losses, outputs, labels) per group
        if isinstance(batch, list):  # (x, y) pairs: the epoch's last call, its last mini-batch smaller
            xs, ys = [x for x, _ in batch], [y for _, y in batch]
        else:  # (xs (K, B, 784), ys (K, B)): K mini-batches of one size
            xs, ys = batch
        size = self.compile_steps or len(xs)
        for start in range(0, len(xs), size):
            group = (xs[start : start + size], ys[start : start + size])
            # A short last group, or batches of two sizes, would need a compile of their own.
            whole = self.compile_steps and torch.is_tensor(xs) and len(group[0]) == size
            compiled = self._compiled_group(optimizer, *group, scheduler) if whole else None
            if compiled is None:
                results += self._eager_group(optimizer, zip(*group), scheduler)
            else:
                results.append(compiled)
        # The metrics and the NaN flag see the K steps at once: one update each instead of K.
        step_losses = torch.cat([losses for losses, _, _ in results])
        outputs = torch.cat([o.flatten(0, 1) for _, o, _ in results])  # (K * B, 10)
        labels = torch.cat([y.flatten() for _, _, y in results])
        sizes = torch.cat([torch.full_like(losses, y.shape[-1]) for losses, _, y in results])
        self.train_loss.update((step_losses * sizes).sum() / sizes.sum(), sizes.sum())
        self.train_acc.update(outputs.argmax(-1), labels)
        bad = ~torch.isfinite(step_losses)
        self._flag_nonfinite(bad.any(), first_step + bad.int().argmax())
        return None

    def _eager_group(
        self, optimizer: Any, group: Iterable[tuple[torch.Tensor, torch.Tensor]], scheduler: Any
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        results = []
        for x, y in group:  # what Lightning's automatic loop does for each mini-batch, minus its overhead
            output = self.model(x)
            loss = self.loss_fn(output, y)
            optimizer.optimizer.zero_grad()
            loss.backward()
            if self.log_grad_norms:
                self.on_before_optimizer_step(optimizer.optimizer)
            optimizer.optimizer.step()
            optimizer._on_before_step()  # Lightning's own step count (global_step) advances as it would
            optimizer._on_after_step()
            if scheduler is not None:
                scheduler.step()
            results.append((loss.detach()[None], output.detach()[None], y[None]))
        return results

    def _train_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss = self._step("train", batch)
        self._flag_nonfinite(~torch.isfinite(loss.detach()), self.global_step)
        return loss

    def _flag_nonfinite(self, bad: torch.Tensor, step: int | torch.Tensor) -> None:
        first_bad = bad & (self.nonfinite_step < 0)
        # In place: assigning a buffer goes through nn.Module.__setattr__, a cost on every step.
        self.nonfinite_epoch.copy_(torch.where(first_bad, self.current_epoch, self.nonfinite_epoch))
        self.nonfinite_step.copy_(torch.where(first_bad, step, self.nonfinite_step))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.check_finite_every_n_steps == 0:
            self.raise_if_nonfinite()

    def on_train_epoch_start(self) -> None:  # not called when a run resumes in the middle of an epoch
        self.epoch_started = time.perf_counter()
        self.train_loss.reset()
        self.train_acc.reset()

    def on_fit_start(self) -> None:
        self.epoch_started = time.perf_counter()  # a run resumed mid-epoch has no on_train_epoch_start for it
        if not self.automatic_optimization and self.trainer.world_size > 1:
            raise ConfigError(
                "steps_per_call > 1 runs its updates outside Lightning's distributed wrapper, so gradients would "
                "not be synchronised across devices: use steps_per_call=1 with several devices."
            )

    def on_train_epoch_end(self) -> None:
        # Runs before ModelCheckpoint saves this epoch, so weights after a NaN are never checkpointed.
        self.raise_if_nonfinite()
        if not self.automatic_optimization and self.scheduler_interval == "epoch":
            self.lr_schedulers().step()  # what Lightning does for epoch-interval schedulers in automatic mode
        self._log_epoch("train")
        if self.trainer.is_global_zero:  # one line per epoch, for logs where no progress bar is drawn
            values = self.trainer.callback_metrics
            shown = "  ".join(
                f"{key} {float(values[key]):.4f}" for key in sorted(values) if key.split("/")[0] in STAGES
            )
            log.info("epoch %d  %s  (%.1f s)", self.current_epoch, shown, time.perf_counter() - self.epoch_started)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self.log_grad_norms:  # each layer's weight-gradient norm, averaged over the epoch's steps on the device
            norms = {
                f"grad_norm/{name}": p.grad.norm() for name, p in self.model.named_parameters() if "weight" in name
            }
            self.log_dict(norms, on_step=False, on_epoch=True)

    def raise_if_nonfinite(self) -> None:
        step = int(self.nonfinite_step)
        if step >= 0:
            epoch = int(self.nonfinite_epoch)
            raise NonFiniteLossError(
                f"The training loss became NaN or infinite at epoch {epoch}, global step {step}, so "
                f"training stopped. This usually means the learning rate is too large for this model "
                f"and loss (optimizer.lr={self.hparams.optimizer.get('lr')}): lower it, or clip "
                f"gradients with trainer.gradient_clip_val=1.0."
            )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The network's output, the predicted digit, and a probability per digit (B, 10)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        output = self.model(x)
        return {"output": output, "pred": output.argmax(-1), "probs": self.probabilities(output)}

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """Outputs as probabilities: softmax of logits; softmax outputs as they are; sigmoid outputs normalised."""
        activation = self.hparams.model.get("output_activation", "none")
        if activation == "none":
            return output.softmax(-1)
        return output / output.sum(-1, keepdim=True).clamp_min(1e-12)

    @property
    def scheduler_interval(self) -> str | None:
        return {"none": None, "step": "epoch"}.get(self.hparams.scheduler["name"], "step")

    def _total_steps(self) -> int:
        """Optimizer steps in the whole fit: Lightning counts training steps, of K mini-batches each when K > 1."""
        total = int(self.trainer.estimated_stepping_batches)
        if self.automatic_optimization:
            return total
        per_epoch_calls = self.trainer.num_training_batches  # set by estimated_stepping_batches, limits applied
        batches = self.trainer.datamodule.splits["train"].num_batches
        return min(batches, per_epoch_calls * self.steps_per_call) * self.trainer.max_epochs

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        config = self.hparams.scheduler
        name = config["name"]
        if name == "none":
            return optimizer
        total_steps = self._total_steps()
        if name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=total_steps, eta_min=config.get("min_lr", 0.0)
            )
        elif name == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config["step_size"], gamma=config["gamma"])
        else:  # onecycle: warm up to the optimizer's lr, then anneal to ~0
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=total_steps,
                pct_start=config.get("pct_start", 0.3),
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
