"""Classify a digit with a trained checkpoint and print the probability of each digit:

    python scripts/predict.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt image=my_digit.png
    python scripts/predict.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt index=8
    python scripts/predict.py ckpt_path=... index=1 network=network.png nudges=nudges.png

`image` is any picture of one digit (converted to grey, resized to 28×28, inverted if the paper is light);
`index` is an image of the MNIST test set (0 to 9999). `network=PATH` draws the image going through the
network (each layer's activations); `nudges=PATH` draws what backpropagation on this one example wants of
each weight and bias (give `label=D` with `image=`).
"""

from mlptrain.cli import exit_without_collecting
from mlptrain.commands import predict
from mlptrain.errors import run_script

if __name__ == "__main__":
    exit_without_collecting()
    run_script(predict)
