"""Take a trained network out of the trainer: a page to draw digits on and watch it decide, or an ONNX file.

    python scripts/export.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt
    python scripts/export.py ckpt_path=.../best.ckpt serve=true          # and serve it on http://127.0.0.1:8000
    python scripts/export.py ckpt_path=.../best.ckpt format=onnx         # pip install -e ".[export]"

format=page writes <run dir>/page/index.html (or out=FOLDER): one self-contained file that opens from disk with no
network or server. serve=true also serves that folder on localhost (port=8000, 0 for any free port) until Ctrl-C,
for browsers that refuse local files. format=onnx writes <run dir>/model.onnx (or out=FILE): MNIST pixels
(N, 28, 28) from 0 to 255 -> the network's output and a probability per digit, checked with onnxruntime against
the model on the 10,000 test images.
"""

from mlptrain.cli import exit_without_collecting
from mlptrain.commands import page
from mlptrain.errors import run_script

if __name__ == "__main__":
    exit_without_collecting()
    run_script(page)
