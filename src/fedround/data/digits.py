"""The 8x8 handwritten digits that ship inside scikit-learn (no download)."""
from __future__ import annotations

import numpy as np

from fedround.data.federated import FederatedData
from fedround.data.partitions import dirichlet_label_skew


def digits(num_clients: int = 50, alpha: float = 0.5, test_fraction: float = 0.2,
           min_size: int = 10, seed: int = 0) -> FederatedData:
  """sklearn's 1,797 digits as [8, 8, 1] images in [0, 1].

  A stratified ``test_fraction`` is held out first; the rest is split over
  clients by Dirichlet(alpha) label skew.
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  bunch = load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_fraction, stratify=y, random_state=seed)
  parts = dirichlet_label_skew(y_train, num_clients, alpha, seed, min_size)
  return FederatedData.from_clients([x_train[p] for p in parts],
                                    [y_train[p] for p in parts],
                                    x_test, y_test, num_classes=10)
