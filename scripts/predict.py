"""Classify a digit with a trained checkpoint and print the probability of each digit:

    python scripts/predict.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt image=my_digit.png
    python scripts/predict.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt index=8

`image` is any picture of one digit (converted to grey, resized to 28×28, inverted if the paper is light);
`index` is an image of the MNIST test set (0 to 9999).
"""

import sys

from omegaconf import OmegaConf

from mlptrain.errors import MlptrainError
from mlptrain.predict import image_pixels, load, probabilities, test_image


def run(args: dict) -> None:
    if not args.get("ckpt_path") or (args.get("image") is None) == (args.get("index") is None):
        raise MlptrainError("Give ckpt_path=PATH.ckpt and one of image=PATH or index=N (a test-set image).")
    system, config = load(args["ckpt_path"])
    data = config.get("data", {})
    if args.get("image") is not None:
        pixels, truth = image_pixels(args["image"]), None
    else:
        pixels, truth = test_image(int(args["index"]), data.get("dir"))
    probs = probabilities(system, pixels, data.get("normalize", "standard"))
    for digit, p in enumerate(probs):
        print(f"{digit}  {p:6.1%}  {'#' * round(40 * p)}")
    print(f"prediction: {probs.argmax()}" + ("" if truth is None else f" (true label: {truth})"))


if __name__ == "__main__":
    try:
        run(OmegaConf.to_container(OmegaConf.from_cli()))
    except MlptrainError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
