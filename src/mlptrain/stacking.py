"""Which jobs of a sweep train together as one population (hydra/launcher=population), and why a job cannot.

    stack_key(cfg) -> (what must be equal to stack, "") or (None, why the job trains on its own)

Members of one population may differ in MEMBER_KEYS (seeds, init, the optimizer's numbers), in MEMBER_KINDS
(what the notes compare: the activation, the cost, dropout) and in MEMBER_WIDTHS (the widths, the depth equal).
Imports neither torch nor Lightning where it can: the launcher groups a sweep's jobs with it before training.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlptrain.config import plain
from mlptrain.training_path import lightning_only, member_path

# Keys in which the members of one population may differ: everything else must be equal to stack them.
MEMBER_KEYS = (
    "seed",
    "data.shuffle_seed",
    "model.init",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "optimizer.betas",
    "optimizer.eps",
    "output_dir",
    "ckpt_path",  # each member from its own checkpoint, where they stand at the same epoch and update
)
# Keys in which they may differ too, each job composed by Hydra: what a member computes with, on weights of one
# shape (maxout and a `_target_` activation, which have shapes or parameters of their own, must be equal).
MEMBER_KINDS = (
    "model.activation",
    "model.logistic_slope",
    "model.leaky_relu_slope",
    "model.output_activation",
    "model.dropout",
    "loss",
)
# And in width: model.hidden, its depth equal (members narrower than the widest are zero-padded), but for maxout
# and `_target_` activations, whose layers or parameters have shapes of their own.
MEMBER_WIDTHS = ("model.hidden",)


NETWORK_GROUPS = ("model", "loss", "optimizer", "scheduler")  # what a checkpoint's network was built and trained with


def network_values(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as plain values, for stacking: with train=false, the model.*, loss.*, optimizer.* and
    scheduler.* of the network its ckpt_path holds (what it evaluates, as train() records in config.yaml), not
    the command line's. Raises CheckpointError where that file is not an mlptrain checkpoint."""
    values = plain(OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("hydra", "output_dir")]))
    if not values["train"] and values.get("ckpt_path"):
        from mlptrain.rundir import read_checkpoint

        held = read_checkpoint(values["ckpt_path"])["hyper_parameters"]
        values.update({group: dict(held[group]) for group in NETWORK_GROUPS})
    return values


def stack_key(cfg: DictConfig) -> tuple[str | None, str]:
    """What must be equal for two jobs to train (or, with train=false, be tested) as one population, as a string,
    and ""; or None and why the job cannot be stacked (it then runs on its own, and the launcher's log says why in
    one line)."""
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("hydra", "output_dir")])
    try:
        values = network_values(job)
        why = _why_alone(job) if job.train else None  # evaluated: no training that could not stack
    except Exception:  # the job's own run will say what is wrong
        return None, "its config does not resolve or is refused, or its checkpoint does not load (its run says why)"
    if why is not None:
        return None, why
    activation = values["model"]["activation"]
    own = activation if isinstance(activation, dict) or activation == "maxout" else None
    for key in (*MEMBER_KEYS, *MEMBER_KINDS):
        *parents, last = key.split(".")
        node = values
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    if own is None:
        values["model"]["hidden"] = f"{len(values['model']['hidden'])} hidden layers"  # of any widths
    if not values["train"]:  # evaluated, not trained: how each was trained does not matter
        for group in ("optimizer", "scheduler"):
            values.pop(group)
    return repr((sorted(values.items()), own)), ""


def _why_alone(job: DictConfig) -> str | None:
    """Why the job's training cannot be a population member's (it trains on its own), or None."""
    path, only = member_path(job), lightning_only(job)
    return next(
        (
            reason
            for reason, applies in (
                (
                    "compile=true with model.dropout: compiled code draws other masks",
                    job.model.dropout and path.compile,
                ),
                (
                    "model.dropout on a GPU: a run's masks come from CUDA's fused dropout kernel, whose draws a "
                    "member's own generator cannot repeat",
                    job.model.dropout and _on_gpu(job),
                ),
                (
                    "model.dropout with data.loader=dataloader: each pass over a DataLoader draws a seed from its "
                    "run's random generator, between the masks, which a member's own generator cannot repeat",
                    job.model.dropout and job.data.loader != "tensor",
                ),
                (f"Lightning's loop, one mini-batch per training step: {only}", only is not None),
            )
            if applies
        ),
        None,
    )


def kind_of(hparams: Mapping[str, Any]) -> str:
    """What a member computes with (MEMBER_KINDS' values), as a string: members of one kind share them.
    hparams: the member's system.hyperparameters (plain dicts of its model, loss and optimizer)."""
    model = hparams["model"]
    return repr([model.get(key.split(".")[1]) for key in MEMBER_KINDS[:-1]] + [dict(hparams["loss"])])


def side_by_side(keys: Sequence[Any]) -> list[slice]:
    """The runs of equal keys in a sequence (sorted, so each key has one run), as slices of it."""
    runs: list[slice] = []
    for m, key in enumerate(keys):
        if m and key == keys[m - 1]:
            runs[-1] = slice(runs[-1].start, m + 1)
        else:
            runs.append(slice(m, m + 1))
    return runs


def _on_gpu(cfg: DictConfig) -> bool:
    """Whether the job would train on a CUDA device (trainer.accelerator auto or gpu, with one there)."""
    import torch

    return str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def optimizer_settings(hparams: Mapping[str, Any]) -> str:
    """A member's optimizer settings (of its system.hyperparameters), as a string: members with equal ones share an
    optimizer."""
    return repr(sorted(hparams["optimizer"].items()))
