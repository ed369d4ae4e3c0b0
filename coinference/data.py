"""Data sets: a registry of image classification sets returned as uint8 tensors plus their normalisation.

Images are kept as ``uint8`` NCHW tensors (the bytes a device camera would produce, and what PNG sizes are
measured on); :meth:`ImageData.normalize` turns them into the float input a model expects.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coinference.errors import ConfigError, DataError
from coinference.registry import Registry

VAL_FRACTION = 0.1
"""Default validation split: this fraction of a data set's training images (CIFAR-10: 5,000 of 50,000)."""
VAL_SEED = 0
"""Seed of the stratified draw of the validation images: fixed, so every process and run holds out the same ones."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """Train, validation and test images with the normalisation the models use.

    The validation images are held out of the training images (:func:`hold_out_validation`) and never trained
    on: everything that *chooses* (a variant's accuracy in a search, thresholds, fronts, floors, stopping rules)
    reads them. The test images are only reported. Evaluation functions read ``test_x``/``test_y``;
    :meth:`evaluated_on` gives a view whose evaluated images are the validation ones.

    Attributes:
        name: registry name of the data set.
        train_x: uint8 images, shape (N_train, C, H, W).
        train_y: int64 labels, shape (N_train,).
        test_x: uint8 images, shape (N_test, C, H, W).
        test_y: int64 labels, shape (N_test,).
        mean: per-channel mean of the [0, 1]-scaled pixels used for normalisation.
        std: per-channel standard deviation used for normalisation.
        classes: class names, index order.
        val_x: uint8 validation images, shape (N_val, C, H, W) (empty: no validation split).
        val_y: int64 validation labels, shape (N_val,).
        split_id: names the train/validation partition (e.g. ``val5000-s0``; ``""``: none); part of every cache
            key of what is trained on the training images.
        evaluated: which images ``test_x``/``test_y`` hold: ``"test"``, or ``"val"`` in an :meth:`evaluated_on`
            view.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    val_x: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    val_y: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    split_id: str = ""
    evaluated: str = "test"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.test_x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → float32 normalised model input of the same shape."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def first_test(self, n: int | None) -> ImageData:
        """The same data with only the first ``n`` evaluated images (None or n ≥ N: unchanged)."""
        if n is None or n >= len(self.test_x):
            return self
        return replace(self, test_x=self.test_x[:n], test_y=self.test_y[:n])

    def evaluated_on(self, split: str) -> ImageData:
        """A view whose evaluated images (``test_x``/``test_y``) are the ``"val"`` or the ``"test"`` images.

        Raises:
            DataError: ``"val"`` on data without a validation split.
        """
        if split not in ("val", "test"):
            raise ConfigError(f"evaluation split must be 'val' or 'test', got {split!r}")
        if split == self.evaluated:
            return self
        if self.evaluated != "test":
            raise ConfigError("evaluated_on() takes the full data, not a view")
        if split == "val" and len(self.val_y) == 0:
            raise DataError(f"data set {self.name!r} has no validation split")
        return replace(self, test_x=self.val_x, test_y=self.val_y, evaluated="val")

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageData:
        """The same images with another normalisation (e.g. the one a pretrained checkpoint was trained with)."""
        if len(mean) != self.input_shape[0] or len(std) != self.input_shape[0]:
            raise ConfigError(f"normalisation needs {self.input_shape[0]} channels, got mean={mean} std={std}")
        return replace(self, mean=tuple(mean), std=tuple(std))


def default_val_size(n_train: int) -> int:
    """The validation images held out of ``n_train`` training images by default (:data:`VAL_FRACTION`, ≥ 1)."""
    return max(1, round(n_train * VAL_FRACTION))


def hold_out_validation(data: ImageData, val_size: int | None = None, seed: int = VAL_SEED) -> ImageData:
    """``data`` with ``val_size`` training images moved to a validation split (None: :func:`default_val_size`).

    The draw is stratified by class (each class keeps its share, as far as counts allow) and seeded, so the same
    data set, size and seed always hold out the same images; the training images keep their order otherwise.

    Raises:
        DataError: ``val_size`` < 1, or so large that no training image would be left (the message names it).
    """
    n = len(data.train_y)
    if len(data.val_y):
        raise ConfigError(f"data set {data.name!r} already has a validation split")
    size = default_val_size(n) if val_size is None else val_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size >= n:
        raise DataError(f"validation size must be an integer in [1, {n - 1}] for {data.name}'s {n:,} training images, "
                        f"got {val_size}")  # fmt: skip
    from sklearn.model_selection import train_test_split

    y = data.train_y.numpy()
    counts = np.bincount(y)
    counts = counts[counts > 0]
    # stratified when each class can give an image to both sides (sklearn's condition); else a plain seeded draw
    can = counts.min() >= 2 and min(size, n - size) >= len(counts)
    stratify = y if can else None
    train_idx, val_idx = train_test_split(np.arange(n), test_size=size, random_state=seed, stratify=stratify)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    t_idx, v_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return replace(
        data,
        train_x=data.train_x[t_idx],
        train_y=data.train_y[t_idx],
        val_x=data.train_x[v_idx],
        val_y=data.train_y[v_idx],
        split_id=f"val{size}-s{seed}",
    )


DatasetFactory = Callable[..., ImageData]
DATASETS: Registry[DatasetFactory] = Registry("data set")


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, val_size: int | None = None, **kwargs: Any
) -> ImageData:
    """Load the data set registered as ``name`` (``data_dir`` is required by file-backed sets such as cifar10),
    with ``val_size`` of its training images held out as the validation split (None: the default
    :data:`VAL_FRACTION`; see :func:`hold_out_validation`)."""
    factory = DATASETS.get(name)
    return hold_out_validation(factory(data_dir=data_dir, **kwargs), val_size)


# --------------------------------------------------------------------------------------------- digits
@DATASETS.register("digits")
def load_digits(data_dir: str | Path | None = None, test_fraction: float = 0.25, seed: int = 0) -> ImageData:
    """scikit-learn's digits (1,797 real 8×8 grey images, 17 grey levels) with a fixed stratified split.

    Pixels 0..16 are scaled to 0..255 so that every data set is uint8 with 8 bits per value.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    scaled = x_tr.astype(np.float64) / 255.0
    return ImageData(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
        (float(scaled.mean()),),
        (float(scaled.std()),),
        tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------------------------- synthetic
@DATASETS.register("synthetic")
def load_synthetic(
    data_dir: str | Path | None = None,
    n_train: int = 256,
    n_test: int = 128,
    size: int = 8,
    channels: int = 3,
    num_classes: int = 4,
    seed: int = 0,
) -> ImageData:
    """Tiny generated images for tests: each class is a fixed random pattern plus noise (learnable in seconds)."""
    if min(n_train, n_test, size, channels, num_classes) < 1:
        raise ConfigError("synthetic data needs positive n_train, n_test, size, channels and num_classes")
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, size, size, generator=g) * 200 + 20

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + torch.randn(n, channels, size, size, generator=g) * 30
        return x.clamp(0, 255).round().to(torch.uint8), y.to(torch.int64)

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return ImageData(
        "synthetic",
        x_tr,
        y_tr,
        x_te,
        y_te,
        (0.5,) * channels,
        (0.25,) * channels,
        tuple(f"class{i}" for i in range(num_classes)),
    )


# --------------------------------------------------------------------------------------------- cifar10
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_DIRNAME = "cifar-10-batches-py"
# Statistics of the official CIFAR-10 training pixels; override with ImageData.with_normalization.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The only globals a CIFAR python batch needs: numpy array reconstruction (both numpy 1.x and 2.x paths)
# and the latin-1 bytes shim of Python-2 pickles. Anything else in a file is refused, never executed.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-pickle CIFAR-10 batch with a restricted unpickler.

    Returns:
        images uint8 (N, 3, 32, 32) and labels int64 (N,).
    Raises:
        DataError: missing, corrupt or wrongly shaped batch.
    """
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 batch file: {path}")
    try:
        with path.open("rb") as f:
            d = _RestrictedUnpickler(f, encoding="latin1").load()
    except Exception as e:  # any unpickling failure means a corrupt or hostile file
        raise DataError(f"corrupt CIFAR-10 batch {path}: {e}") from None
    if not isinstance(d, dict) or "data" not in d or not ({"labels", "fine_labels"} & set(d)):
        raise DataError(f"corrupt CIFAR-10 batch {path}: expected a dict with 'data' and 'labels'")
    data = d["data"]
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"wrongly shaped CIFAR-10 batch {path}: data {shape}, expected (N, 3072) uint8")
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"wrongly shaped CIFAR-10 batch {path}: {labels.shape[0]} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_root(data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DataError("cifar10 needs --data-dir (a folder holding cifar-10-batches-py/, or that folder itself)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory does not exist: {root}")
    return root / CIFAR10_DIRNAME if (root / CIFAR10_DIRNAME).is_dir() else root


@DATASETS.register("cifar10")
def load_cifar10(
    data_dir: str | Path | None = None, download: bool = False, train_limit: int | None = None
) -> ImageData:
    """CIFAR-10 from the standard python-batches layout (``<data_dir>/cifar-10-batches-py/``).

    Args:
        data_dir: folder holding ``cifar-10-batches-py`` (or that folder itself).
        download: fetch and verify the official archive first when the batches are missing.
        train_limit: keep only the first N training images (for quick runs); None keeps all 50,000.
    """
    if download and data_dir is not None and not (Path(data_dir) / CIFAR10_DIRNAME / CIFAR10_TEST).is_file():
        download_cifar10(data_dir)
    root = _cifar_root(data_dir)
    parts = [read_cifar_batch(root / name) for name in CIFAR10_TRAIN]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    if train_limit is not None:
        x_tr, y_tr = x_tr[:train_limit], y_tr[:train_limit]
    x_te, y_te = read_cifar_batch(root / CIFAR10_TEST)
    return ImageData(
        "cifar10",
        torch.from_numpy(np.ascontiguousarray(x_tr)),
        torch.from_numpy(y_tr),
        torch.from_numpy(np.ascontiguousarray(x_te)),
        torch.from_numpy(y_te),
        CIFAR10_MEAN,
        CIFAR10_STD,
        CIFAR10_CLASSES,
    )


def download_cifar10(data_dir: str | Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Download the CIFAR-10 archive, verify its MD5, and extract it safely into ``data_dir``.

    Returns:
        The path of the extracted ``cifar-10-batches-py`` folder.
    Raises:
        DataError: no network, checksum mismatch, or an archive member that would escape ``data_dir``.
    """
    root = Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            blob = r.read()
    except OSError as e:
        raise DataError(f"cannot download CIFAR-10 from {url}: {e}") from None
    got = hashlib.md5(blob).hexdigest()
    if got != md5:
        raise DataError(f"CIFAR-10 archive checksum mismatch: md5 {got}, expected {md5}")
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot extract CIFAR-10 archive: {e}") from None
    return root / CIFAR10_DIRNAME
