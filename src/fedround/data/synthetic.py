"""FedProx's Synthetic(alpha, beta) federation (Li et al., MLSys 2020).

Follows the generator of litian96/FedProx (data/synthetic_*/generate_*.py) and
ALGORITHMS.md section 8: d = 60, 10 classes, n_k = int(lognormal(4, 2)) + 50,
u_k ~ N(0, alpha), B_k ~ N(0, beta), v_k ~ N(B_k, 1)^60, Sigma = diag(j^-1.2),
W_k ~ N(u_k, 1)^{60x10}, b_k ~ N(u_k, 1)^10, x ~ N(v_k, Sigma),
y = argmax(x W_k + b_k); each user's data split 90/10 into train and test.

Note, as in the original generator: u_k shifts every logit of user k by the
same amount (u_k * sum(x) + u_k), so alpha changes no label; heterogeneity
grows with beta (feature shift) and through the per-user draws of W_k, b_k.
"""
from __future__ import annotations

import numpy as np

from fedround.data.federated import FederatedData

DIMENSION = 60
NUM_CLASSES = 10


def generate_synthetic(num_clients: int = 30, alpha: float = 0.5,
                       beta: float = 0.5, iid: bool = False, seed: int = 0):
  """Returns per-user lists (xs, ys) of the full (train + test) data."""
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}')
  if alpha < 0 or beta < 0:
    raise ValueError(f'alpha and beta are standard deviations and must be '
                     f'>= 0, got alpha={alpha}, beta={beta}')
  rng = np.random.default_rng(seed)
  sizes = rng.lognormal(4, 2, num_clients).astype(int) + 50
  mean_w = rng.normal(0, alpha, num_clients)
  shift = rng.normal(0, beta, num_clients)
  cov_diag = np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2
  if iid:
    mean_x = np.zeros((num_clients, DIMENSION))
    w_global = rng.normal(0, 1, (DIMENSION, NUM_CLASSES))
    b_global = rng.normal(0, 1, NUM_CLASSES)
  else:
    mean_x = rng.normal(shift[:, None], 1, (num_clients, DIMENSION))
  xs, ys = [], []
  for k in range(num_clients):
    if iid:
      w, b = w_global, b_global
    else:
      w = rng.normal(mean_w[k], 1, (DIMENSION, NUM_CLASSES))
      b = rng.normal(mean_w[k], 1, NUM_CLASSES)
    x = mean_x[k] + rng.normal(size=(sizes[k], DIMENSION)) * np.sqrt(cov_diag)
    xs.append(x.astype(np.float32))
    ys.append(np.argmax(x @ w + b, axis=1).astype(np.int32))
  return xs, ys


def synthetic(num_clients: int = 30, alpha: float = 0.5, beta: float = 0.5,
              iid: bool = False, seed: int = 0,
              train_fraction: float = 0.9) -> FederatedData:
  """Synthetic(alpha, beta) (or its IID variant) as a FederatedData.

  Each user's first ``train_fraction`` of examples train, the rest are pooled
  into the test split (the FedProx 90/10 split).
  """
  xs, ys = generate_synthetic(num_clients, alpha, beta, iid, seed)
  train_x, train_y, test_x, test_y = [], [], [], []
  for x, y in zip(xs, ys):
    cut = int(train_fraction * len(x))
    train_x.append(x[:cut]), train_y.append(y[:cut])
    test_x.append(x[cut:]), test_y.append(y[cut:])
  return FederatedData.from_clients(
      train_x, train_y, np.concatenate(test_x), np.concatenate(test_y),
      NUM_CLASSES)
