"""The MNIST files: where they are, their checksums, and their images and labels as tensors, read from the IDX
files directly. Imports neither torchvision nor Lightning (predict, the page and the report read the test set
through here); torchvision is imported only to download the files (data.download=true)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mlptrain.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

# SHA-256 of each decompressed original file: the .gz bytes may differ (recompression), the content may not.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The copy carried in this repository (data/MNIST/raw/*.gz): where data.dir=null looks first in a checkout. An
# installed package does not carry it (README, "MNIST outside the checkout"): it looks in the user's cache instead.
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "data"
DATA_VARIABLE = "MLPTRAIN_DATA"  # a folder holding MNIST/raw/, for every run that leaves data.dir unset
# Pixel mean and standard deviation over the 60,000 training images, on the [0, 1] scale.
MEAN, STD = 0.1307, 0.3081
N_TRAIN_FILE = 60_000
N_TEST_FILE = 10_000
NORMALIZATIONS = ("unit", "standard")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    """The user's cache for MNIST: $XDG_CACHE_HOME/mlptrain, or ~/.cache/mlptrain."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mlptrain"


def default_dir() -> Path:
    """Where MNIST is when data.dir is null: $MLPTRAIN_DATA where it is set; else this checkout's copy (data/),
    when mlptrain runs from its repository; else the user's cache (cache_dir), where data.download=true fetches it."""
    if os.environ.get(DATA_VARIABLE):
        return Path(os.environ[DATA_VARIABLE]).expanduser()
    if (EMBEDDED_DIR / "MNIST" / "raw").is_dir():
        return EMBEDDED_DIR
    return cache_dir()


def data_dir(configured: str | Path | None) -> Path:
    """The folder holding MNIST/raw/ for data.dir = `configured` (null: default_dir)."""
    return Path(configured).expanduser() if configured else default_dir()


def _fix_hint(raw: Path) -> str:
    return (
        f"Copy the four original MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into {raw}, or point data.dir= (or the "
        f"environment variable {DATA_VARIABLE}) at a folder that holds MNIST/raw/ with them, or set "
        f"data.download=true to fetch them there with torchvision (checksums are checked either way)."
    )


def prepare_mnist(root: Path, download: bool = False, names: tuple[str, ...] = tuple(SHA256)) -> Path:
    """Make `root/MNIST/raw` hold the four decompressed MNIST files (or those `names`), each verified by SHA-256.

    That is where read_split, and torchvision's `MNIST(root)`, read them. A missing decompressed file is made from
    the `.gz` beside it; with neither present, torchvision downloads them if `download` allows.
    Returns the raw folder.
    """
    raw = root / "MNIST" / "raw"
    missing = [name for name in names if not (raw / name).exists() and not (raw / f"{name}.gz").exists()]
    if missing and download:
        log.info("Downloading MNIST into %s with torchvision", raw)
        from torchvision import datasets  # only to download

        try:
            for train in (True, False):
                datasets.MNIST(root, train=train, download=True)
        except Exception as error:
            raise DataError(
                f"Downloading MNIST into {raw} failed ({error}). Check the network, or " + _fix_hint(raw)
            ) from error
    elif missing:
        raise DataError(
            f"The MNIST file {raw / missing[0]}(.gz) is missing and data.download is false. " + _fix_hint(raw)
        )
    for name in names:
        _verify_or_unpack(raw, name, SHA256[name])
    return raw


# Files this process has verified, with their (size, modification time) then: the runs of a sweep job by job (one
# process) each prepare the data, and hashing MNIST's 55 MB takes 0.2 s a time.
_VERIFIED: dict[Path, tuple[int, int]] = {}


def _verify_or_unpack(raw: Path, name: str, expected: str) -> None:
    path, packed = raw / name, raw / f"{name}.gz"
    if path.exists():
        stat = path.stat()
        if _VERIFIED.get(path) == (stat.st_size, stat.st_mtime_ns):
            return
        if _sha256(path.read_bytes()) == expected:
            _VERIFIED[path] = (stat.st_size, stat.st_mtime_ns)
            return
        if not packed.exists():
            raise DataError(
                f"{path} does not match the SHA-256 of the original MNIST file (expected "
                f"{expected}): it is corrupt or not MNIST. Delete it; then " + _fix_hint(raw)
            )
        log.warning("%s does not match its checksum; unpacking it again from %s", path, packed.name)
    try:
        content = gzip.decompress(packed.read_bytes())
    except (OSError, EOFError) as error:
        raise DataError(
            f"{packed} is not a readable gzip file ({error}): it is truncated or corrupt. "
            "Delete it; then " + _fix_hint(raw)
        ) from error
    actual = _sha256(content)
    if actual != expected:
        raise DataError(
            f"{packed} decompresses to content whose SHA-256 is {actual}, not the original MNIST "
            f"file's {expected}: it is corrupt or not MNIST. Delete it; then " + _fix_hint(raw)
        )
    # Write beside and rename, so a run interrupted here, or a second run unpacking at the same
    # time, never leaves a half-written file for read_split (or torchvision) to read.
    partial = raw / f"{name}.{os.getpid()}.tmp"
    partial.write_bytes(content)
    os.replace(partial, path)


def to_inputs(images: torch.Tensor, normalize: str) -> torch.Tensor:
    """MNIST images (N, 28, 28) uint8, on any device -> the network's inputs (N, 784) float32."""
    x = images.flatten(1).float().div_(255)
    return x.sub_(MEAN).div_(STD) if normalize == "standard" else x


def read_split(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training file's (60,000) or the test file's (10,000) images (N, 28, 28) uint8 and labels (N,) int64, from
    root/MNIST/raw: what torchvision's MNIST(root, train).data and .targets hold. The two files are checked (and
    unpacked) first, as prepare_mnist does; a DataError says what to do where they are missing or corrupt."""
    import torch

    prefix = "train" if train else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    raw = prepare_mnist(root, names=names)
    images = _idx(raw / names[0], 0x0803)
    labels = _idx(raw / names[1], 0x0801)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def _idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file's array: a big-endian header (magic number, then one 32-bit size per dimension), then the
    unsigned bytes."""
    import numpy as np

    data = path.read_bytes()
    dims = magic & 0xFF
    header = np.frombuffer(data, dtype=">i4", count=1 + dims)
    if int(header[0]) != magic:
        raise DataError(f"{path} is not an MNIST IDX file (magic number {int(header[0]):#x}, expected {magic:#x}).")
    return np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims)).reshape(header[1:].tolist()).copy()
