"""Splitting a centralised (x, y) data set over clients, by name (PARTITIONS)."""
from __future__ import annotations

import numpy as np

from fedround.registry import Registry


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


def iid(y: np.ndarray, num_clients: int, seed: int = 0) -> list[np.ndarray]:
  """A uniform shuffle cut into ``num_clients`` parts of equal size (+-1)."""
  if not 1 <= num_clients <= len(y):
    raise ValueError(f'iid: cannot split {len(y)} examples over '
                     f'{num_clients} clients')
  order = np.random.default_rng(seed).permutation(len(y))
  return np.array_split(order, num_clients)


def label_shards(y: np.ndarray, num_clients: int, shards_per_client: int = 2,
                 seed: int = 0) -> list[np.ndarray]:
  """McMahan et al. (AISTATS 2017)'s pathological non-IID split: sort the
  examples by label, cut them into ``num_clients * shards_per_client``
  shards of equal size (+-1) and give each client ``shards_per_client`` of
  them at random (MNIST: 200 shards of 300 over 100 clients, so most
  clients see two digits)."""
  shards = num_clients * shards_per_client
  if shards_per_client < 1 or not 1 <= shards <= len(y):
    raise ValueError(f'label_shards: cannot cut {len(y)} examples into '
                     f'{num_clients} x {shards_per_client} shards')
  rng = np.random.default_rng(seed)
  # Ties broken at random, so a shard's examples of one label are a sample.
  by_label = np.lexsort((rng.permutation(len(y)), y))
  pieces = np.array_split(by_label, shards)
  dealt = rng.permutation(shards).reshape(num_clients, shards_per_client)
  return [np.concatenate([pieces[s] for s in row]) for row in dealt]


def pachinko(y: np.ndarray, num_clients: int, coarse: np.ndarray | None = None,
             alpha: float = 0.1, beta: float = 10.0,
             examples_per_client: int = 0, seed: int = 0) -> list[np.ndarray]:
  """The two-level Pachinko allocation of Reddi et al., "Adaptive Federated
  Optimization" (ICLR 2021), appendix C (TFF's federated CIFAR-100: 500
  clients of 100 examples, alpha = 0.1, beta = 10).

  Client by client, it draws a distribution over the coarse labels still
  holding examples from a symmetric Dir(alpha), and for each of them one
  over its fine labels still holding examples from Dir(beta). Each of the
  client's ``examples_per_client`` examples (default: all examples /
  num_clients) draws a coarse label, then a fine label under it, then a
  random remaining example of that fine label (without replacement). A
  fine label whose examples are used up leaves its coarse label's
  distribution, and a coarse label whose examples are used up leaves the
  client's, each renormalised. ``coarse`` (int[len(y)]) is every example's
  coarse label.
  """
  if coarse is None:
    raise ValueError('pachinko needs coarse labels (cifar100 has them)')
  coarse = np.asarray(coarse)
  if alpha <= 0 or beta <= 0:
    raise ValueError(f'pachinko alpha and beta must be > 0, got {alpha}, '
                     f'{beta}')
  per_client = examples_per_client or len(y) // num_clients
  if per_client < 1 or per_client * num_clients > len(y):
    raise ValueError(f'pachinko: cannot give {num_clients} clients '
                     f'{per_client} examples each from {len(y)} examples')
  rng = np.random.default_rng(seed)
  fine_of = {int(c): sorted(set(y[coarse == c].tolist()))
             for c in np.unique(coarse)}
  pool = {int(f): list(rng.permutation(np.flatnonzero(y == f)))
          for f in np.unique(y)}
  parts = []
  for _ in range(num_clients):
    coarse_labels = [c for c in fine_of if fine_of[c]]
    coarse_p = rng.dirichlet(np.full(len(coarse_labels), alpha))
    fine_p = {c: rng.dirichlet(np.full(len(fine_of[c]), beta))
              for c in coarse_labels}
    taken = []
    for _ in range(per_client):
      k = _draw(rng, coarse_p)
      c = coarse_labels[k]
      j = _draw(rng, fine_p[c])
      f = fine_of[c][j]
      taken.append(pool[f].pop())
      if not pool[f]:  # fine label f is used up
        fine_of[c].pop(j)
        fine_p[c] = _without(fine_p[c], j)
        if not fine_of[c]:  # so is its coarse label
          coarse_labels.pop(k)
          coarse_p = _without(coarse_p, k)
    parts.append(np.array(taken, np.int64))
  return parts


def _draw(rng, p: np.ndarray) -> int:
  return min(int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(),
                                 side='right')), len(p) - 1)


def _without(p: np.ndarray, i: int) -> np.ndarray:
  """``p`` without entry i, renormalised (uniform if nothing is left)."""
  p = np.delete(p, i)
  total = p.sum()
  return p / total if total > 0 else np.full(len(p), 1 / max(len(p), 1))


PARTITIONS = Registry('partition')
PARTITIONS.register('dirichlet')(dirichlet_label_skew)
PARTITIONS.register('iid')(iid)
PARTITIONS.register('label_shards')(label_shards)
PARTITIONS.register('pachinko')(pachinko)
