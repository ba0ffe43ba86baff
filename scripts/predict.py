"""Classify a digit with a trained checkpoint and print the probability of each digit:

    python scripts/predict.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt image=my_digit.png
    python scripts/predict.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt index=8
    python scripts/predict.py ckpt_path=... index=1 network=network.png nudges=nudges.png

`image` is any picture of one digit (converted to grey, resized to 28×28, inverted if the paper is light);
`index` is an image of the MNIST test set (0 to 9999). `network=PATH` draws the image going through the
network (each layer's activations); `nudges=PATH` draws what backpropagation on this one example wants of
each weight and bias (give `label=D` with `image=`).
"""

from pathlib import Path

from mlptrain.cli import exit_without_collecting
from mlptrain.config import parse_arguments
from mlptrain.errors import run_script
from mlptrain.predict import digit_probabilities, draw_network, draw_nudges, image_pixels, load_trained, test_image


def run(arguments: list[str]) -> None:
    args = parse_arguments(arguments)
    trained = load_trained(args.ckpt_path)
    data = trained.config.get("data", {})
    if args.image is not None:
        pixels, truth = image_pixels(args.image), None
    else:
        pixels, truth = test_image(args.index, data.get("dir"))
    probs = digit_probabilities(trained, pixels, data.get("normalize", "standard"))
    for digit, p in enumerate(probs):
        print(f"{digit}  {p:6.1%}  {'#' * round(40 * p)}")
    print(f"prediction: {probs.argmax()}" + ("" if truth is None else f" (true label: {truth})"))
    name = f"test image #{args.index}, a {truth}" if args.image is None else str(args.image)
    if args.network is not None:
        draw_network(trained, pixels, data.get("normalize", "standard"), name, Path(args.network))
        print(f"network picture: {args.network}")
    if args.nudges is not None:
        label = truth if truth is not None else args.label
        draw_nudges(trained, pixels, label, data.get("normalize", "standard"), Path(args.nudges))
        print(f"nudges picture: {args.nudges}")


if __name__ == "__main__":
    exit_without_collecting()
    run_script(run)
