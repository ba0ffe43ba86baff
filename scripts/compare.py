"""Command line: `python scripts/compare.py experiment=nielsen baselines=[numpy,centroid]`."""

import hydra
from omegaconf import DictConfig

from mlptrain.cli import exit_without_collecting, main


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def run(cfg: DictConfig) -> None:
    from mlptrain.compare import compare  # once the config has passed its checks

    main(cfg, compare)


if __name__ == "__main__":
    exit_without_collecting()
    run()
