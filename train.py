"""Command line: `python train.py [overrides]`, e.g. `python train.py model.activation=tanh loss=mse`."""

import hydra
from omegaconf import DictConfig

from mlptrain.cli import exit_without_collecting, main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    return main(cfg)


if __name__ == "__main__":
    exit_without_collecting()
    run()
