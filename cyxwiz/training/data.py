"""Datasets, splits and the data order — all fixed by the signed spec, none chosen by the node.

A dataset file is a NumPy ``.npz`` with arrays ``X`` (features) and ``y`` (integer labels), read with
``allow_pickle=False`` (a pickle in a dataset would be code). The reference real dataset is scikit-learn's
digits, loaded from the installed package (nothing is downloaded): :func:`prepare_digits` writes the
training file a node receives and the holdout file only the verifier keeps.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cyxwiz.errors import IntegrityError, ValidationError
from cyxwiz.hashing import file_sha256

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Dataset:
    x: FloatArray | IntArray
    y: IntArray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: IntArray) -> Dataset:
        return Dataset(x=self.x[indices], y=self.y[indices])


@dataclass(frozen=True)
class DigitsFiles:
    train: Path
    train_sha256: str
    holdout: Path
    holdout_sha256: str


def _save(path: Path, x: NDArray[np.float32], y: IntArray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez(handle, X=x, y=y)
    return file_sha256(path)


#: Rows of scikit-learn's digits.
DIGITS_ROWS = 1797


def digits_train_rows(holdout_fraction: float = 0.2) -> int:
    """Rows of the training file :func:`prepare_digits` writes (what the spec validator plans with)."""
    return DIGITS_ROWS - round(DIGITS_ROWS * holdout_fraction)


def prepare_digits(directory: Path, *, holdout_fraction: float = 0.2, split_seed: int = 0) -> DigitsFiles:
    """Split scikit-learn's digits (1797 8x8 images, 10 classes) into a training and a holdout file.

    Pixel values are scaled to [0, 1]. The split is stratified-free but seeded, so the same call gives
    byte-identical files (and hashes) on every machine.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(np.random.SeedSequence([split_seed, 0xD161])).permutation(len(y))
    n_holdout = round(len(y) * holdout_fraction)
    hold, train = order[:n_holdout], order[n_holdout:]
    train_path, holdout_path = directory / "digits-train.npz", directory / "digits-holdout.npz"
    return DigitsFiles(
        train=train_path,
        train_sha256=_save(train_path, x[train], y[train]),
        holdout=holdout_path,
        holdout_sha256=_save(holdout_path, x[hold], y[hold]),
    )


def load_dataset(
    path: Path, *, sha256: str | None, input_shape: tuple[int, ...], input_dtype: str, num_classes: int
) -> Dataset:
    """Load and check a dataset file: content hash (D3), shapes, label range."""
    if sha256 is not None and file_sha256(path) != sha256:
        raise IntegrityError(
            "dataset content does not match its SHA-256 in the job spec", path=str(path), rule="D3"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            x_raw, y_raw = archive["X"], archive["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValidationError(
            f"not a dataset .npz with arrays X and y: {exc}", path=str(path), rule="G1"
        ) from None
    n = int(y_raw.shape[0]) if y_raw.ndim == 1 else -1
    if n <= 0 or x_raw.shape[0] != n:
        raise ValidationError("X and y must have the same number of rows and y must be 1-D", path=str(path))
    if math.prod(x_raw.shape[1:]) != math.prod(input_shape):
        raise ValidationError(
            f"samples of shape {list(x_raw.shape[1:])} do not fit the model input shape {list(input_shape)}",
            field="model.input_shape",
            path=str(path),
            rule="G2",
        )
    if not np.issubdtype(y_raw.dtype, np.integer) or y_raw.min() < 0 or y_raw.max() >= num_classes:
        raise ValidationError(
            f"labels must be integers in [0, {num_classes})", path=str(path), field="task.num_classes"
        )
    dtype = np.int64 if input_dtype == "int64" else np.float32
    x = np.ascontiguousarray(x_raw.reshape((n, *input_shape)).astype(dtype))
    return Dataset(x=x, y=np.ascontiguousarray(y_raw.astype(np.int64)))


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, n: int, epoch: int) -> IntArray:
    # Every step of an epoch slices the same permutation: drawn once, not once a step. Read-only, since
    # the cached array is shared.
    order = _rng(seed, 1, epoch).permutation(n).astype(np.int64)
    order.setflags(write=False)
    return order


def split_validation(n: int, *, seed: int, fraction: float) -> tuple[IntArray, IntArray]:
    """(train indices, validation indices) of a dataset of ``n`` rows, fixed by the seed."""
    order = _rng(seed, 2).permutation(n).astype(np.int64)
    n_val = int(n * fraction)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass(frozen=True)
class DataOrder:
    """Which training rows each optimizer step uses: a fresh seeded permutation per epoch."""

    seed: int
    n: int
    batch_size: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def _permutation(self, epoch: int) -> IntArray:
        return _epoch_permutation(self.seed, self.n, epoch)

    def batch(self, step: int) -> IntArray:
        epoch, within = divmod(step, self.steps_per_epoch)
        return self._permutation(epoch)[within * self.batch_size : (within + 1) * self.batch_size]

    def segment_sha256(self, start: int, end: int) -> str:
        """Hash of the batch indices of steps ``start .. end-1`` (int64 little-endian, concatenated)."""
        digest = hashlib.sha256()
        cache: dict[int, IntArray] = {}
        for step in range(start, end):
            epoch, within = divmod(step, self.steps_per_epoch)
            if epoch not in cache:
                cache = {epoch: self._permutation(epoch)}
            rows = cache[epoch][within * self.batch_size : (within + 1) * self.batch_size]
            digest.update(rows.astype("<i8").tobytes())
        return digest.hexdigest()
