"""Built-in offline datasets for classifiers: scikit-learn's digits and generated MNIST-1D.

Nothing is downloaded. The split into train/test and the labeled subset of the training split are seeded,
so every arm of a comparison sees the same samples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ClassificationData:
    x_train: Tensor  # (N, C, ...) float32
    y_train: Tensor  # (N,) int64, the true labels (the teacher's training labels)
    labeled: Tensor  # (N,) bool, which training labels the student may use
    x_extra: Tensor  # (M, C, ...) extra unlabeled inputs for the transfer set (M may be 0)
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def student_targets(self) -> Tensor:
        """Training labels with -1 where the student may not see the label."""
        return torch.where(self.labeled, self.y_train, torch.full_like(self.y_train, -1))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.labeled, self.x_extra, self.x_test, self.y_test):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def _labeled_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified subset so every class keeps at least one label."""
    rng = np.random.default_rng(seed + 7919)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, round(fraction * len(idx)))
        mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def load_digits_data(test_fraction: float, labeled_fraction: float, split_seed: int) -> ClassificationData:
    """8x8 handwritten digits (1797 images, 10 classes) bundled with scikit-learn, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, split_seed)
    return ClassificationData(
        x_train=torch.from_numpy(x_tr),
        y_train=torch.from_numpy(y_tr),
        labeled=torch.from_numpy(_labeled_mask(y_tr, labeled_fraction, split_seed)),
        x_extra=torch.empty((0, *x_tr.shape[1:]), dtype=torch.float32),
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_te),
        num_classes=10,
    )


def _mnist1d(num_samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # optional extra
        raise RuntimeError(
            "the mnist1d dataset needs the `mnist1d` package: pip install 'kdistill[bench]'"
        ) from err
    args = get_dataset_args()
    args.seed = seed
    if num_samples is not None:
        args.num_samples = num_samples
    d = make_dataset(args)  # generated locally; get_dataset() would try a download first
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]  # (N, 1, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return x, y


def load_mnist1d_data(
    test_fraction: float,
    labeled_fraction: float,
    split_seed: int,
    extra_unlabeled: int,
    num_samples: int | None,
) -> ClassificationData:
    """MNIST-1D (Greydanus 2020): 40-sample 1-D digit signals generated offline; more can be generated."""
    x, y = _mnist1d(num_samples, seed=42)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, split_seed)
    if extra_unlabeled:
        # another generator seed gives fresh samples of the same distribution; labels are discarded
        x_more, _ = _mnist1d(max(extra_unlabeled, 20), seed=1000 + split_seed)
        x_extra = x_more[:extra_unlabeled]
    else:
        x_extra = np.empty((0, *x_tr.shape[1:]), dtype=np.float32)
    return ClassificationData(
        x_train=torch.from_numpy(x_tr),
        y_train=torch.from_numpy(y_tr),
        labeled=torch.from_numpy(_labeled_mask(y_tr, labeled_fraction, split_seed)),
        x_extra=torch.from_numpy(np.ascontiguousarray(x_extra)),
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_te),
        num_classes=10,
    )


def load_classification_data(
    dataset: str,
    *,
    test_fraction: float = 0.3,
    labeled_fraction: float = 1.0,
    split_seed: int = 0,
    extra_unlabeled: int = 0,
    num_samples: int | None = None,
) -> ClassificationData:
    if dataset == "digits":
        return load_digits_data(test_fraction, labeled_fraction, split_seed)
    if dataset == "mnist1d":
        return load_mnist1d_data(test_fraction, labeled_fraction, split_seed, extra_unlabeled, num_samples)
    raise ValueError(f"unknown dataset {dataset!r}; known: digits, mnist1d")
