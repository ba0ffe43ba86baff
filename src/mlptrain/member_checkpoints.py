"""Each member's checkpoints, a run's (a population of one) and a population's alike: Lightning saves the
system's, and each member gets its part, cut to its own shapes, in a run's format (`member_checkpoint`), so
train=false, scripts/predict.py, the report and a run of its own take it; a resume stacks the members'
checkpoints again, padded to the widest (`population_checkpoint`; a run's is its own). `MemberCheckpointIO` is
the Lightning plugin that does both, durably (rundir.write_durably)."""

from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from mlptrain.model import cut, padded
from mlptrain.rundir import library_versions, write_durably, write_metrics
from mlptrain.system import TRAINING_STATES, MLPSystem, upgrade
from mlptrain.tracking import STATE_KEY


def member_checkpoint(system: MLPSystem, checkpoint: dict[str, Any], m: int) -> dict[str, Any]:
    """Member m's part of the system's checkpoint, as its run alone saves it then (a run's: its own)."""
    from mlptrain.frameworks import HPARAMS_AS_KEYWORDS  # which imports Hydra's sweeper: not before Hydra does

    s = system.set_of[m]
    offset = m - system.parts[s].start
    shapes = system.shapes[m]

    def own(t: torch.Tensor, index: int) -> torch.Tensor:  # member m's part of a stacked tensor; a run's is its own
        return t[index] if system.in_population else t

    state_dict = {
        f"model.{name}": cut(own(p, m).detach(), shapes[name]) for name, p in zip(system.names, system.stacked)
    }
    # The training metrics' states, (N,) each: the member's, as a run's of one member
    state_dict.update({key: checkpoint["state_dict"][key][m : m + 1].clone() for key in TRAINING_STATES})
    optimizer = checkpoint["optimizer_states"][s]
    member = {key: value for key, value in checkpoint.items() if key not in ("optimizer_states", "lr_schedulers")}
    member.update(
        state_dict=state_dict,
        optimizer_states=[
            {
                "state": {
                    index: {
                        key: cut(own(t, offset), shapes[system.names[index]]) if t.dim() > 0 else t.clone()
                        for key, t in values.items()
                    }
                    for index, values in optimizer["state"].items()
                },
                "param_groups": optimizer["param_groups"],
            }
        ],
        callbacks={
            **checkpoint.get("callbacks", {}),  # a run's extra callbacks' (population: the trigger's, replaced next)
            **{callback.state_key: callback.state_dict() for callback in system.checkpoints[m]},
            **({system.trajectories[m].state_key: system.trajectories[m].state_dict()} if system.trajectories else {}),
            **({STATE_KEY: system.trackers[m].state()} if system.trackers else {}),
        },
        **HPARAMS_AS_KEYWORDS,
        hyper_parameters=system.hparams_of[m],
        config=system.plain[m],
        library_versions=library_versions(),
        rng_states=_rng_states(system, m),
        **system.records_of(m),
    )
    schedulers = checkpoint.get("lr_schedulers", [])
    member["lr_schedulers"] = [schedulers[s]] if schedulers else []
    if "summed_gradients" in checkpoint:  # stopped within an update's mini-batches (MLPSystem.summed_gradients)
        summed = zip(system.names, checkpoint["summed_gradients"])
        member["summed_gradients"] = [cut(own(g, m), shapes[name]) for name, g in summed]
    return member


def _rng_states(system: MLPSystem, m: int) -> dict[str, Any]:
    """Member m's random generators' states, so that its dropout draws on after a resume as it would have: a
    population member's own generator, or the process's (and CUDA's) for a run, which
    MLPSystem.on_load_checkpoint restores."""
    generators = system.model.generators
    if generators is not None:
        return {"torch": generators[m].get_state()}
    states = {"torch": torch.get_rng_state()}
    if not system.in_population and torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def population_checkpoint(system: MLPSystem) -> dict[str, Any]:
    """The population's checkpoint, stacked from its members' (system.resumed): what Lightning restores. A run's
    is its own, as it is (a model of another shape is Lightning's error, train.fit's ConfigError)."""
    members = system.resumed
    assert members is not None
    first = members[0]
    if not system.in_population:
        return first
    state_dict = {
        f"model.{name}": torch.stack([padded(c["state_dict"][f"model.{name}"], system.full[name]) for c in members])
        for name in system.names
    }
    for c in members:
        upgrade(c["state_dict"])  # a checkpoint written before system.MemberMean and MemberAccuracy
    state_dict.update({key: torch.cat([c["state_dict"][key] for c in members]) for key in TRAINING_STATES})
    optimizers, schedulers = [], []
    for part in system.parts:
        own = [c["optimizer_states"][0] for c in members[part]]
        optimizers.append(
            {
                "state": {
                    index: {
                        key: torch.stack(
                            [padded(o["state"][index][key], system.full[system.names[index]]) for o in own]
                        )
                        if t.dim() > 0
                        else t
                        for key, t in values.items()
                    }
                    for index, values in own[0]["state"].items()
                },
                "param_groups": own[0]["param_groups"],
            }
        )
        schedulers += members[part.start].get("lr_schedulers", [])[:1]
    population = {key: value for key, value in first.items() if key not in ("callbacks", "history")}
    population.update(state_dict=state_dict, optimizer_states=optimizers, lr_schedulers=schedulers, callbacks={})
    if "summed_gradients" in first:  # every member's: they stand at the same mini-batch
        population["summed_gradients"] = [
            torch.stack([padded(c["summed_gradients"][i], system.full[name]) for c in members])
            for i, name in enumerate(system.names)
        ]
    population["members"] = [
        {
            "history": c["history"],
            "epoch_lrs": c["epoch_lrs"],
            "callbacks": c["callbacks"],
            "rng_state": c.get("rng_states", {}).get("torch"),
        }
        for c in members
    ]
    return population


class MemberCheckpointIO(CheckpointIO):
    """Lightning's checkpoint of the system (wherever it is asked for: an epoch's end, a SIGTERM, SLURM's
    time-limit signal), written as each member's: last.ckpt always, best.ckpt where the member's val/acc is its
    best so far, then its metrics.csv from the history the checkpoint holds, all durably (mlptrain.rundir), each
    file replaced whole or not at all. Failed members are left as they were. Loading gives the system's checkpoint
    from the members' own (MLPSystem.resumed, population_checkpoint); the path Lightning names is not read."""

    def __init__(self, system: MLPSystem) -> None:
        self.system = system

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        system = self.system
        improved = system.improved if system.ended_epoch is not None else None
        for m in system.active():
            best = improved is not None and bool(improved[m])  # named in every process (on_save_checkpoint)
            member = member_checkpoint(system, checkpoint, m)
            folder = system.run_dirs[m] / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            last = system.checkpoints[m].last
            if best:  # written first, as a run's callbacks write it
                write_durably(folder / "best.ckpt", lambda file, saved=member: torch.save(saved, file))
            last.best_model_path = str(folder / "last.ckpt")
            member["callbacks"][last.state_key] = last.state_dict()
            write_durably(folder / "last.ckpt", lambda file, saved=member: torch.save(saved, file))
            write_metrics(system.run_dirs[m], system.histories[m])

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return population_checkpoint(self.system)

    def remove_checkpoint(self, path: Any) -> None:
        pass  # only the members' files are written, and each is replaced, never removed
