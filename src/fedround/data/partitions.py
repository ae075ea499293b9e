"""Splitting a centralised (x, y) data set over clients."""
from __future__ import annotations

import numpy as np


def dirichlet_label_skew(y: np.ndarray, num_clients: int, alpha: float,
                         seed: int = 0, min_size: int = 10,
                         max_tries: int = 100) -> list[np.ndarray]:
  """Per-class Dirichlet label skew (Hsu et al. 2019; NIID-Bench's variant).

  For each class, draws proportions over clients from Dir(alpha), zeroes the
  share of clients that already hold their fair share of examples (the
  NIID-Bench balancing step) and splits the class's shuffled indices
  accordingly; redraws until every client holds at least ``min_size``.
  Under extreme skew (alpha << 1, more clients than a few per class) no draw
  may succeed; then the draw with the largest minimum is kept and its
  smallest clients are topped up with random examples of the largest ones.
  Works for any label array. Returns one index array per client.
  """
  y = np.asarray(y)
  if alpha <= 0:
    raise ValueError(f'dirichlet alpha must be > 0, got {alpha}')
  if num_clients * min_size > len(y):
    raise ValueError(
        f'cannot give {num_clients} clients at least {min_size} examples each '
        f'from {len(y)} examples; lower num_clients or min_size')
  rng = np.random.default_rng(seed)
  classes = np.unique(y)
  best = None
  for _ in range(max_tries):
    parts = [[] for _ in range(num_clients)]
    for c in classes:
      idx = rng.permutation(np.flatnonzero(y == c))
      p = rng.dirichlet(np.full(num_clients, alpha))
      sizes = np.array([len(q) for q in parts])
      p = p * (sizes < len(y) / num_clients)
      p = p / p.sum()
      cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
      for part, chunk in zip(parts, np.split(idx, cuts)):
        part.extend(chunk.tolist())
    if best is None or min(map(len, parts)) > min(map(len, best)):
      best = parts
    if min(map(len, best)) >= min_size:
      break
  _top_up(best, min_size, rng)
  return [rng.permutation(np.array(q, np.int64)) for q in best]


def _top_up(parts: list[list[int]], min_size: int, rng) -> None:
  """Moves random examples from the largest clients to those below min_size."""
  for small in parts:
    while len(small) < min_size:
      donor = max(parts, key=len)
      small.append(donor.pop(int(rng.integers(len(donor)))))
