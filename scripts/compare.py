"""Command line: `python scripts/compare.py experiment=nielsen baselines=[numpy,centroid]`."""

import hydra
from omegaconf import DictConfig

from mlptrain.cli import main
from mlptrain.compare import compare


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def run(cfg: DictConfig) -> None:
    main(cfg, compare)


if __name__ == "__main__":
    run()
