"""CUDA runs: skipped where there is no GPU (CI has none); run them on a GPU machine with `pytest tests/test_gpu.py`."""

import json
from pathlib import Path

import pytest
import torch

from mlptrain.data import MNISTDataModule
from mlptrain.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_data_lives_on_the_gpu_when_training_there(make_cfg) -> None:
    cfg = make_cfg("trainer.accelerator=gpu", "trainer.limit_train_batches=null", "model.hidden=[64]")
    train(cfg)
    result = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    assert result["device"].startswith("cuda") and result["test_acc"] >= 0.92


def test_tensor_batches_are_gathered_on_the_device() -> None:
    data = MNISTDataModule()
    data.setup(device=torch.device("cuda", 0))
    x, y = next(iter(data.train_dataloader()))
    assert x.is_cuda and y.is_cuda and x.shape == (128, 784)
