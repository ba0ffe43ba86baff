import gzip
import shutil
from pathlib import Path

import pytest
import torch
from torchvision import datasets

from mlptrain.data import EpochPermutation, MNISTDataModule, TensorBatches
from mlptrain.errors import DataError
from mlptrain.mnist import EMBEDDED_DIR, MEAN, SHA256, STD, prepare_mnist, read_split


@pytest.fixture(scope="module")
def tensor_data() -> MNISTDataModule:
    data = MNISTDataModule(batch_size=100, normalize="unit")
    data.setup()
    return data


def test_official_split_sizes_and_disjointness(tensor_data: MNISTDataModule) -> None:
    train, val = tensor_data.split_indices()
    assert (len(train), len(val)) == (50_000, 10_000)
    assert len(set(train.tolist()) | set(val.tolist())) == 60_000
    splits = tensor_data.splits
    assert [len(splits[s].labels) for s in ("train", "val", "test")] == [50_000, 10_000, 10_000]
    assert splits["train"].images.shape == (50_000, 784)


def test_test_set_is_the_official_10k(tensor_data: MNISTDataModule) -> None:
    official = datasets.MNIST(EMBEDDED_DIR, train=False)
    assert torch.equal(tensor_data.splits["test"].labels, official.targets)
    assert torch.equal(tensor_data.splits["test"].images, official.data.flatten(1).float() / 255)


@pytest.mark.parametrize("train", [True, False])
def test_our_idx_reader_reads_what_torchvision_reads(train: bool) -> None:
    """mnist.read_split (no torchvision: predict and the page use it) against torchvision's MNIST, every byte."""
    images, labels = read_split(EMBEDDED_DIR, train)
    official = datasets.MNIST(EMBEDDED_DIR, train=train)
    assert images.dtype == official.data.dtype and torch.equal(images, official.data)
    assert labels.dtype == official.targets.dtype and torch.equal(labels, official.targets)


def test_a_file_that_is_not_idx_is_refused_with_its_name(tmp_path: Path) -> None:
    from mlptrain.mnist import _idx

    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an MNIST IDX file"):
        _idx(tmp_path / "t10k-labels-idx1-ubyte", 0x0801)


def test_split_repeats_and_follows_split_seed(tensor_data: MNISTDataModule) -> None:
    again = MNISTDataModule(val_size=10_000)
    assert all(torch.equal(a, b) for a, b in zip(tensor_data.split_indices(), again.split_indices()))
    tensor_data.setup()  # a second setup() keeps the split it made
    labels = datasets.MNIST(EMBEDDED_DIR, train=True).targets
    assert torch.equal(tensor_data.splits["val"].labels, labels[again.split_indices()[1]])
    other = MNISTDataModule(split_seed=1).split_indices()[1]
    assert not torch.equal(other, again.split_indices()[1])
    assert len(MNISTDataModule(val_size=5_000).split_indices()[0]) == 55_000
    subset, val = MNISTDataModule(train_size=1000).split_indices()
    assert len(subset) == 1000 and torch.equal(val, again.split_indices()[1])
    assert set(subset.tolist()) <= set(again.split_indices()[0].tolist())


def test_each_epoch_has_its_own_shuffle_fixed_by_seed_and_epoch() -> None:
    sampler = EpochPermutation(1000, seed=7)
    first = sampler.permutation()
    sampler.set_epoch(1)
    second = sampler.permutation()
    assert sorted(first.tolist()) == list(range(1000))
    assert not torch.equal(first, second)
    resumed = EpochPermutation(1000, seed=7)
    resumed.set_epoch(1)
    assert torch.equal(resumed.permutation(), second)
    assert not torch.equal(EpochPermutation(1000, seed=8).permutation(), first)


def test_batches_cover_the_training_split_once_per_epoch(tensor_data: MNISTDataModule) -> None:
    loader = tensor_data.train_dataloader()
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 500
    assert torch.equal(labels.sort().values, tensor_data.splits["train"].labels.sort().values)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_every_global_batch_without_overlap(world_size: int) -> None:
    n, batch = 1001, 20  # a last batch of 1 is smaller than the ranks: every rank drops it
    images, labels = torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)
    single = TensorBatches(images, labels, batch, EpochPermutation(n, seed=3))
    ranks = [
        TensorBatches(images, labels, batch, EpochPermutation(n, seed=3), rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        for loader in [single, *ranks]:
            loader.sampler.set_epoch(epoch)
        shares = [list(loader) for loader in ranks]
        assert all(len(share) == len(loader) == 50 for share, loader in zip(shares, ranks))
        for step, (_, whole) in enumerate(single):
            if step == 50:
                assert len(whole) == 1
                break
            parts = [share[step][1] for share in shares]
            assert torch.equal(torch.cat(parts), whole)  # together, the ranks train on the one-process batch
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    evaluation = [TensorBatches(images, labels, 300, rank=r, world_size=world_size) for r in range(world_size)]
    assert torch.equal(torch.cat([y for loader in evaluation for _, y in loader]), labels)


def test_resume_at_skips_the_mini_batches_already_trained_on() -> None:
    n = 100
    loader = TensorBatches(torch.arange(n)[:, None], torch.arange(n), 10, EpochPermutation(n, seed=0), steps_per_call=3)
    loader.sampler.set_epoch(4)

    def labels() -> torch.Tensor:  # each item a Chunk: images (K, B, 1), labels (K, B), gathered at once
        return torch.cat([chunk.labels.flatten() for chunk in loader])

    whole = labels()
    loader.resume_at(epoch=4, done=6)
    assert torch.equal(labels(), whole[60:])
    single = TensorBatches(torch.arange(n)[:, None], torch.arange(n), 10, EpochPermutation(n, seed=0))
    single.sampler.set_epoch(4)
    assert torch.equal(torch.cat([y for _, y in single]), whole)  # the same batches as one at a time
    chunk = next(iter(loader))
    assert chunk.images.shape == (3, 10, 1) and torch.equal(chunk.images[..., 0], chunk.labels)
    assert chunk.rows is None and chunk.sizes.tolist() == [10, 10, 10]
    assert torch.equal(labels(), whole)  # the pass after it is whole again
    loader.resume_at(epoch=3, done=6)  # saved at the end of epoch 3: epoch 4 starts at its beginning
    assert torch.equal(labels(), whole)


@pytest.mark.parametrize("state", [{"epoch": 2, "batches_done": 8}, {"epoch": 2, "steps_done": 2}])
def test_the_data_modules_resume_state_new_and_old(state: dict) -> None:
    """batches_done counts mini-batches; checkpoints from before it counted training steps of K mini-batches."""
    data = MNISTDataModule(train_size=200, batch_size=10, steps_per_call=4)
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(2)
    whole = torch.cat([chunk.labels.flatten() for chunk in loader])
    data.load_state_dict(state)
    assert torch.equal(torch.cat([chunk.labels.flatten() for chunk in loader]), whole[80:])


def test_tensor_and_dataloader_paths_serve_the_same_batches() -> None:
    for normalize in ("unit", "standard"):
        tensor = MNISTDataModule(batch_size=64, normalize=normalize, loader="tensor")
        classic = MNISTDataModule(batch_size=64, normalize=normalize, loader="dataloader")
        tensor.setup()
        classic.setup()
        for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
            (x1, y1), (x2, y2) = next(iter(getattr(tensor, split)())), next(iter(getattr(classic, split)()))
            assert torch.equal(y1, y2)
            assert torch.equal(x1, x2)  # the same inputs, made by the same function


def test_normalizations(tensor_data: MNISTDataModule) -> None:
    images = tensor_data.splits["train"].images
    assert images.min().item() == 0.0 and images.max().item() == 1.0
    standard = MNISTDataModule(normalize="standard")
    standard.setup()
    x = standard.splits["train"].images
    assert torch.allclose(x, (images - MEAN) / STD, atol=1e-5)
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.std().item() == pytest.approx(1.0, abs=0.01)


@pytest.fixture
def copied_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in SHA256:
        shutil.copyfile(EMBEDDED_DIR / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    return raw


def test_gz_files_are_unpacked_and_verified(copied_raw: Path) -> None:
    prepare_mnist(copied_raw.parents[1])
    assert all((copied_raw / name).is_file() for name in SHA256)
    assert not list(copied_raw.glob("*.tmp"))


def test_corrupt_gz_is_named(copied_raw: Path) -> None:
    labels = copied_raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one wrong label
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz decompresses to content whose SHA-256"):
        prepare_mnist(copied_raw.parents[1])


def test_truncated_gz_is_named(copied_raw: Path) -> None:
    images = copied_raw / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is not a readable gzip file"):
        prepare_mnist(copied_raw.parents[1])


def test_corrupt_unpacked_file_is_replaced_from_its_gz(copied_raw: Path) -> None:
    prepare_mnist(copied_raw.parents[1])
    (copied_raw / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    prepare_mnist(copied_raw.parents[1])
    assert len((copied_raw / "t10k-labels-idx1-ubyte").read_bytes()) == 10_008


def test_corrupt_unpacked_file_without_gz_is_named(copied_raw: Path) -> None:
    prepare_mnist(copied_raw.parents[1])
    (copied_raw / "t10k-labels-idx1-ubyte.gz").unlink()
    (copied_raw / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte does not match the SHA-256"):
        prepare_mnist(copied_raw.parents[1])


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\(\.gz\) is missing and data\.download is false"):
        prepare_mnist(tmp_path)


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline stand-in for the network: torchvision's download step fetches from our embedded copy."""
    calls = []

    def fake_download(self: datasets.MNIST) -> None:
        calls.append(self.raw_folder)
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)
        for name in SHA256:
            with gzip.open(EMBEDDED_DIR / "MNIST" / "raw" / f"{name}.gz") as packed:
                (Path(self.raw_folder) / name).write_bytes(packed.read())

    monkeypatch.setattr(datasets.MNIST, "download", fake_download)
    data = MNISTDataModule(dir=str(tmp_path), download=True)
    data.prepare_data()
    data.setup()
    assert calls and Path(calls[0]) == tmp_path / "MNIST" / "raw"
    assert len(data.splits["test"].labels) == 10_000


def test_failed_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: datasets.MNIST) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match="Downloading MNIST into .* failed .*Check the network"):
        prepare_mnist(tmp_path, download=True)


def test_a_smaller_last_batch_comes_in_a_chunk_of_lists() -> None:
    n = 95  # nine batches of 10 and one of 5
    images, labels = torch.arange(n)[:, None], torch.arange(n)
    loader = TensorBatches(images, labels, 10, EpochPermutation(n, seed=1), steps_per_call=4)
    chunks = list(loader)
    assert [torch.is_tensor(chunk.labels) for chunk in chunks] == [True, True, False]
    assert [len(y) for y in chunks[-1].labels] == [10, 5] and chunks[-1].sizes.tolist() == [10, 5]
    seen = torch.cat([*(chunk.labels.flatten() for chunk in chunks[:2]), *chunks[-1].labels])
    assert torch.equal(seen.sort().values, torch.arange(n))
    # A population's engine gets rows of the inputs in place of the images (gather=False): the same batches.
    rows = TensorBatches(images, labels, 10, EpochPermutation(n, seed=1), steps_per_call=4, gather=False)
    for chunk, by_rows in zip(chunks, rows, strict=True):
        assert chunk.rows is None and by_rows.images is None
        for x, row in zip(chunk.images, by_rows.rows, strict=True):
            assert torch.equal(x, images[row])
