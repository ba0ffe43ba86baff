"""MNIST for training: the official split, and mini-batches (the files themselves: mlptrain.mnist)."""

import functools
import itertools
import logging
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from mlptrain.mnist import N_TRAIN_FILE, SHA256, data_dir, prepare_mnist, read_split, to_inputs

log = logging.getLogger(__name__)

LOADERS = ("tensor", "dataloader")


def _sample_inputs(image: torch.Tensor, normalize: str) -> torch.Tensor:
    """One image (1, 28, 28) uint8 -> its inputs (784,): to_inputs on a batch of one (DataLoader workers pickle it)."""
    return to_inputs(image, normalize)[0]


class EpochPermutation(Sampler[int]):
    """A fresh shuffle of range(n) every epoch, fixed by (seed, epoch) alone.

    Lightning calls `set_epoch` before each training epoch, so a run resumed at epoch e
    draws the same order an uninterrupted one would. With a list of seeds (a population's members, each
    with its own data.shuffle_seed), `permutation` gives one order per seed, (N, n), each the one a run
    alone with that seed draws.
    """

    def __init__(self, n: int, seed: int | Sequence[int]) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The order of `epoch` (default: the current one): (n,), or (N, n) for N seeds."""
        epoch = self.epoch if epoch is None else epoch
        if not isinstance(self.seed, int):
            return torch.stack([self._order(seed, epoch) for seed in self.seed])
        return self._order(self.seed, epoch)

    def _order(self, seed: int, epoch: int) -> torch.Tensor:
        state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(int(state)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


class MemberBatches(Sampler[list[int]]):
    """A population's DataLoader mini-batches (data.loader=dataloader): the j-th of every member's own epoch order
    (EpochPermutation, each member's data.shuffle_seed), one after another, N x B indices, which its step views as
    (N, B): each member the mini-batches its run alone's DataLoader serves. Lightning calls its `sampler`'s set_epoch
    every epoch (as a BatchSampler's)."""

    def __init__(self, n: int, seeds: Sequence[int], batch_size: int) -> None:
        self.sampler, self.batch_size = EpochPermutation(n, list(seeds)), batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for part in self.sampler.permutation().split(self.batch_size, dim=-1):  # (N, B)
            yield part.flatten().tolist()

    def __len__(self) -> int:
        return -(-self.sampler.n // self.batch_size)


class Chunk(NamedTuple):
    """One training step's K consecutive mini-batches (steps_per_call = K > 1), in the epoch's order.

    Exactly one of `images` and `rows` is set. `images`: the mini-batches' inputs (K, B, 784). `rows`: in their
    place, for a population's engine (TensorBatches' gather=False), each member's rows of the training inputs
    (K, N, B), which it gathers itself in one operation. `labels`: (K, B), or (K, N, B) with `rows`. Where the
    epoch's last, smaller mini-batch is among the K, the tensors cannot stack: each field is then a list of K
    tensors, each its own size. `sizes`: each mini-batch's examples (K,) float64, on the batches' device,
    whichever form the chunk has (the weights of its losses in the epoch's means).
    """

    images: torch.Tensor | list[torch.Tensor] | None
    rows: torch.Tensor | list[torch.Tensor] | None
    labels: torch.Tensor | list[torch.Tensor]
    sizes: torch.Tensor


def _take(values: torch.Tensor, index: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """values at K mini-batches' indices: stacked (K, ...), or a list of K index tensors of different sizes."""
    return values[index] if torch.is_tensor(index) else [values[part] for part in index]


class TensorBatches:
    """Mini-batches sliced from tensors already on the training device: no per-sample Python work.

    With a sampler, each pass gathers batches in that epoch's shuffled order; without one, it
    walks the tensors in order (for evaluation). With several processes (DDP), `batch_size` is the
    global batch: each of the `world_size` ranks takes its own share of every batch, so together they
    see the batches one process would. Evaluation sets are cut into one contiguous shard per rank.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        sampler: EpochPermutation | None = None,
        steps_per_call: int = 1,
        rank: int = 0,
        world_size: int = 1,
        limit: int | float | None = None,
        gather: bool = True,
    ) -> None:
        self.images, self.labels = images, labels  # (N, 784) float, (N,) int64
        # gather=False (a population's): training chunks, of one mini-batch too, hold the mini-batches' rows of
        # `images` in place of their images (Chunk.rows). A population's engine gathers every member's at once.
        self.gather = gather
        self.batch_size = batch_size
        # trainer.limit_train_batches, applied here in mini-batches whatever steps_per_call is (Lightning's
        # would count training steps): a count, or a fraction of the epoch's batches as Lightning takes it.
        self.limit = limit
        # With steps_per_call = K > 1, each item is a Chunk of K consecutive mini-batches, for a training step
        # that makes K updates (MLPSystem's steps_per_call); the batches and their order do not change. With
        # K = 1 (and for evaluation) each item is one mini-batch, (x (B, 784), y (B,)), as a DataLoader's.
        self.steps_per_call = steps_per_call
        self.rank, self.world_size = rank, world_size
        # The two DataLoader attributes Lightning inspects: it calls sampler.set_epoch every epoch.
        self.sampler, self.batch_sampler = sampler, None
        self._resume: tuple[int, int] | None = None  # (epoch, mini-batches of it already trained on)

    def resume_at(self, epoch: int, done: int) -> None:
        """Make the next pass, if it is over `epoch`, start after its first `done` mini-batches: a run resumed
        from a mid-epoch checkpoint then trains on exactly the batches the interrupted one had not."""
        self._resume = (epoch, done)

    @property
    def num_batches(self) -> int:
        """Training: the global mini-batches per epoch. Evaluation: this rank's batches."""
        if self.sampler is None:
            return -(-len(self._eval_shard()) // self.batch_size)
        full, rest = divmod(len(self.labels), self.batch_size)
        # A last batch smaller than the number of ranks would leave some rank nothing: it is dropped.
        batches = full + (rest >= self.world_size)
        if isinstance(self.limit, float):
            return int(batches * self.limit)
        return batches if self.limit is None else min(batches, self.limit)

    def __len__(self) -> int:
        return -(-self.num_batches // self.steps_per_call)

    def __iter__(self) -> Iterator[Any]:
        if self.sampler is None:
            yield from self._eval_batches()
            return
        indices = self._train_indices()
        if self.steps_per_call == 1 and self.gather:  # a population's engine takes Chunks, of one mini-batch too
            for index in indices:
                yield self.images[index], self.labels[index]
            return
        while parts := list(itertools.islice(indices, self.steps_per_call)):
            counts = [part.shape[-1] for part in parts]  # a part: (B,), or (N, B) for a population's N members
            device = parts[0].device
            if len(set(counts)) == 1:  # one indexing operation for the K mini-batches: (K, B) or (K, N, B)
                index = torch.stack(parts)
                sizes = torch.full((len(parts),), counts[0], dtype=torch.float64, device=device)
            else:  # the epoch's last call, its last mini-batch smaller
                index = parts
                sizes = torch.tensor(counts, dtype=torch.float64, device=device)
            images = _take(self.images, index) if self.gather else None
            rows = None if self.gather else index
            yield Chunk(images=images, rows=rows, labels=_take(self.labels, index), sizes=sizes)

    def _eval_shard(self) -> range:
        size, rest = divmod(len(self.labels), self.world_size)  # cut as tensor_split cuts
        start = self.rank * size + min(self.rank, rest)
        return range(start, start + size + (self.rank < rest))

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard = self._eval_shard()
        for start in range(shard.start, shard.stop, self.batch_size):
            end = min(start + self.batch_size, shard.stop)
            yield self.images[start:end], self.labels[start:end]

    def epoch_order(self, epoch: int) -> list[torch.Tensor]:
        """The mini-batches of `epoch` as index tensors, in the order training takes them (the batch limit
        applied): the one place the batch order is made, for the trainer and for the baselines alike."""
        order = self.sampler.permutation(epoch).to(self.labels.device)  # (n,), or (N, n) for N members
        return list(order.split(self.batch_size, dim=-1)[: self.num_batches])

    def _train_indices(self) -> Iterator[torch.Tensor]:
        """This epoch's mini-batches as index tensors: this rank's share, after those already trained on."""
        skip = 0
        if self._resume is not None:
            epoch, done = self._resume
            skip = done if epoch == self.sampler.epoch else 0
            self._resume = None
        for index in self.epoch_order(self.sampler.epoch)[skip:]:
            yield index.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else index


def split_indices(split_seed: int, val_size: int, train_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into the 60k training file; the same for a given split_seed on every call and rank."""
    order = torch.randperm(N_TRAIN_FILE, generator=torch.Generator().manual_seed(split_seed))
    end = None if train_size is None else val_size + train_size
    return order[val_size:end].sort().values, order[:val_size].sort().values


@functools.lru_cache(maxsize=1)
def _split_inputs(
    root: Path, split_seed: int, val_size: int, train_size: int | None, normalize: str, device: torch.device
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """The splits as the network's inputs on `device`, made once and shared (read only) by every data module of
    this process that asks for the same: the runs of a sweep job by job (one process) read MNIST once."""
    full_images, full_labels = read_split(root, train=True)
    test_images, test_labels = read_split(root, train=False)
    train, val = split_indices(split_seed, val_size, train_size)
    indices = {"train": train, "val": val}
    inputs = {
        split: (to_inputs(full_images[index].to(device), normalize), full_labels[index].to(device))
        for split, index in indices.items()
    }
    inputs["test"] = (to_inputs(test_images.to(device), normalize), test_labels.to(device))
    return inputs, (test_images, test_labels)


class MNISTDataModule(L.LightningDataModule):
    """MNIST with the official split: validation carved from the 60k training images, test = the 10k."""

    def __init__(
        self,
        dir: str | None = None,
        download: bool = False,
        val_size: int = 10_000,
        train_size: int | None = None,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        normalize: str = "standard",
        loader: str = "tensor",
        num_workers: int = 0,
        steps_per_call: int = 1,
        limit_train_batches: int | float | None = None,
        gather: bool = True,
        member_shuffle_seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        # A population's members' data.shuffle_seed, one each: the training mini-batches are then (N, B), each
        # member's own rows (a population: system.MLPSystem.population), and shuffle_seed is not used.
        self.member_shuffle_seeds = list(member_shuffle_seeds) if member_shuffle_seeds is not None else None
        # The values' ranges and choices are mlptrain.config's rules, checked before this is built.
        self.steps_per_call = steps_per_call
        self.gather = gather  # False: training mini-batches as rows of the inputs (TensorBatches' gather)
        self.limit_train_batches = limit_train_batches
        self.root = data_dir(dir)
        self.download = download
        self.val_size, self.train_size = val_size, train_size
        self.split_seed, self.shuffle_seed = split_seed, shuffle_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.normalize, self.loader, self.num_workers = normalize, loader, num_workers
        self.splits: dict[str, TensorBatches | Subset] = {}
        self._test_pixels: tuple[torch.Tensor, torch.Tensor]
        self._resume: dict[str, int] = {}

    def prepare_data(self) -> None:
        prepare_mnist(self.root, self.download)

    def split_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices into the 60k training file (module-level split_indices, this module's split)."""
        return split_indices(self.split_seed, self.val_size, self.train_size)

    def setup(self, stage: str | None = None, device: torch.device | None = None) -> None:
        """Load the split; with loader=tensor, onto `device` (default: the trainer's device, else the CPU)."""
        if self.splits:
            return
        if not all((self.root / "MNIST" / "raw" / name).exists() for name in SHA256):
            prepare_mnist(self.root, self.download)  # setup() called on its own, without prepare_data()
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if self.loader == "dataloader":
            from torchvision import datasets, transforms  # this loader's alone

            # Per sample, the same function as the tensor path: PIL image -> (784,) inputs.
            transform = transforms.Compose(
                [transforms.PILToTensor(), transforms.Lambda(partial(_sample_inputs, normalize=self.normalize))]
            )
            full = datasets.MNIST(self.root, train=True, transform=transform)
            train_idx, val_idx = self.split_indices()
            test = datasets.MNIST(self.root, train=False, transform=transform)
            self._test_pixels = (test.data, test.targets)
            self.splits = {
                "train": Subset(full, train_idx.tolist()),
                "val": Subset(full, val_idx.tolist()),
                "test": test,
            }
            return
        if device is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        inputs, self._test_pixels = _split_inputs(
            self.root, self.split_seed, self.val_size, self.train_size, self.normalize, device
        )

        def batches(split: str, train: bool) -> TensorBatches:
            x, labels = inputs[split]
            if not train:
                return TensorBatches(x, labels, self.eval_batch_size, rank=rank, world_size=world)
            seeds = self.member_shuffle_seeds
            sampler = EpochPermutation(len(labels), self.shuffle_seed if seeds is None else seeds)
            return TensorBatches(
                x,
                labels,
                self.batch_size,
                sampler,
                self.steps_per_call,
                rank,
                world,
                self.limit_train_batches,
                self.gather,
            )

        self.splits = {"train": batches("train", True), "val": batches("val", False), "test": batches("test", False)}
        if self._resume:
            self.load_state_dict(self._resume)

    def train_inputs(self) -> torch.Tensor:
        """The training split's inputs (N, 784), as the training mini-batches' rows index them (gather=False)."""
        train = self.splits["train"]
        assert isinstance(train, TensorBatches), "setup() with loader=tensor makes the training split"
        return train.images

    def test_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test set as it is on file, for pictures: images (10000, 28, 28) uint8 and labels (10000,)."""
        self.setup()
        return self._test_pixels

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A split as the network sees it, for code outside Lightning (baselines, benchmarks): x (N, 784)
        float32, normalised as configured, and y (N,) int64, on the CPU. Needs loader=tensor."""
        self.setup()
        batches = self.splits[split]
        if not isinstance(batches, TensorBatches):
            raise TypeError("arrays() serves the tensor loader's splits: build the data module with loader='tensor'.")
        return batches.images.cpu().numpy(), batches.labels.cpu().numpy()

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The training mini-batches of `epoch` as index arrays into arrays("train"), in the trainer's order."""
        self.setup()
        return [index.cpu().numpy() for index in self.splits["train"].epoch_order(epoch)]  # type: ignore[union-attr]

    def state_dict(self) -> dict[str, int]:
        """Where in its epoch training stands, saved in every checkpoint: the epoch, and the mini-batches of it
        that the module has trained on (MLPSystem.batches_done_in_epoch, which counts each one once its update
        is made; what this module has served runs a batch ahead, as Lightning fetches one in advance)."""
        if self.trainer is None:
            return {}
        epoch = self.trainer.current_epoch
        return {"epoch": epoch, "batches_done": self.trainer.lightning_module.batches_done_in(epoch)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume mid-epoch: the restored epoch skips the mini-batches the checkpointed run had trained on."""
        self._resume = dict(state)
        train = self.splits.get("train")
        if isinstance(train, TensorBatches) and state:
            # Checkpoints from before batches_done counted training steps of steps_per_call mini-batches each.
            done = state["batches_done"] if "batches_done" in state else state["steps_done"] * self.steps_per_call
            train.resume_at(state["epoch"], done)

    def _loader(self, split: str) -> TensorBatches | DataLoader:
        data = self.splits[split]
        if isinstance(data, TensorBatches):
            return data
        train = split == "train"
        world = self.trainer.world_size if self.trainer is not None else 1
        workers = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }
        if train and self.member_shuffle_seeds is not None:  # a population's: every member's mini-batch at once
            return DataLoader(data, batch_sampler=MemberBatches(len(data), self.member_shuffle_seeds, self.batch_size),
                              **workers)  # fmt: skip
        return DataLoader(
            data,
            # data.batch_size is the global batch; Lightning gives each rank a DistributedSampler share.
            batch_size=max(1, self.batch_size // world) if train else self.eval_batch_size,
            sampler=EpochPermutation(len(data), self.shuffle_seed) if train else None,
            **workers,
        )

    def train_dataloader(self) -> TensorBatches | DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> TensorBatches | DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> TensorBatches | DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> TensorBatches | DataLoader:
        return self._loader("test")
