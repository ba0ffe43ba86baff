"""Draw every activation of the registry with its derivative, from the code that trains:

python scripts/plot_activations.py [out=docs/images/activations.png] [logistic_slope=4.0] [leaky_relu_slope=0.1]
"""

from pathlib import Path

from omegaconf import OmegaConf

from mlptrain.plots import plot_activations

DEFAULTS = {"out": "docs/images/activations.png", "logistic_slope": 4.0, "leaky_relu_slope": 0.1}

if __name__ == "__main__":
    args = OmegaConf.merge(DEFAULTS, OmegaConf.from_cli())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    names = plot_activations(Path(args.out), args.logistic_slope, args.leaky_relu_slope)
    print(f"{len(names)} activations drawn in {args.out}")
