"""FederatedData: every client's examples as one padded array on device."""
from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class FederatedData:
  """Padded client arrays plus a pooled test split.

  x: [N, max_n, ...] features, zero beyond each client's count.
  y: [N, max_n] int32 labels, 0 beyond each client's count.
  n: [N] int32 valid example counts.
  test_x, test_y: the held-out split, pooled over clients.
  proxy_x, proxy_y: a small class-balanced server proxy set taken out of
    the test split (``with_splits``), or None.
  val_x, val_y, val_n: each client's validation examples, padded like x,
    taken out of its training examples (``with_splits``), or None.
  """
  x: jax.Array
  y: jax.Array
  n: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int = flax.struct.field(pytree_node=False)
  proxy_x: jax.Array | None = None
  proxy_y: jax.Array | None = None
  val_x: jax.Array | None = None
  val_y: jax.Array | None = None
  val_n: jax.Array | None = None

  @property
  def num_clients(self) -> int:
    return self.x.shape[0]

  @property
  def max_examples(self) -> int:
    return self.x.shape[1]

  @property
  def mask(self):
    """[N, max_n] bool: True where an example is real, False on padding."""
    return np.arange(self.max_examples)[None, :] < np.asarray(self.n)[:, None]

  @property
  def padding_waste(self) -> float:
    """Fraction of the padded client array that is padding."""
    return 1.0 - float(np.sum(self.n)) / (self.num_clients * self.max_examples)

  @classmethod
  def from_clients(cls, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                   test_x: np.ndarray, test_y: np.ndarray,
                   num_classes: int) -> 'FederatedData':
    """Pads a list of per-client (x, y) arrays into one federation."""
    if len(xs) != len(ys) or not xs:
      raise ValueError(f'need one y per x and at least one client; got '
                       f'{len(xs)} x and {len(ys)} y arrays')
    counts = np.array([len(x) for x in xs], np.int32)
    if (counts == 0).any():
      raise ValueError(f'clients {np.flatnonzero(counts == 0).tolist()} hold '
                       'no examples')
    max_n = int(counts.max())
    feature_shape = np.asarray(xs[0]).shape[1:]
    x = np.zeros((len(xs), max_n, *feature_shape), np.float32)
    y = np.zeros((len(xs), max_n), np.int32)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
      x[i, :len(xi)] = xi
      y[i, :len(yi)] = yi
    return cls(x=x, y=y, n=counts, test_x=np.asarray(test_x, np.float32),
               test_y=np.asarray(test_y, np.int32), num_classes=num_classes)

  @property
  def label_counts(self) -> np.ndarray:
    """int[N, L]: each client's training examples per class."""
    y = np.where(self.mask, np.asarray(self.y), self.num_classes)
    return np.stack([np.bincount(row, minlength=self.num_classes + 1)
                     [:self.num_classes] for row in y])

  def with_splits(self, proxy_fraction: float = 0.0,
                  validation_fraction: float = 0.0,
                  seed: int = 0) -> 'FederatedData':
    """Takes a class-balanced server proxy set of ``proxy_fraction`` of the
    test split out of it (as FedLAW does with 2%), and each client's
    validation split, ``validation_fraction`` of its examples (at least one,
    leaving at least one), out of its training examples."""
    rng = np.random.default_rng(seed)
    data = self
    if proxy_fraction > 0:
      test_y = np.asarray(self.test_y)
      per_class = max(1, round(proxy_fraction * len(test_y)
                               / self.num_classes))
      taken = np.concatenate([
          rng.permutation(np.flatnonzero(test_y == c))[:per_class]
          for c in range(self.num_classes)])
      kept = np.setdiff1d(np.arange(len(test_y)), taken)
      test_x = np.asarray(self.test_x)
      data = data.replace(proxy_x=test_x[taken], proxy_y=test_y[taken],
                          test_x=test_x[kept], test_y=test_y[kept])
    if validation_fraction > 0:
      x, y, n = np.asarray(self.x), np.asarray(self.y), np.asarray(self.n)
      xs, ys, vxs, vys = [], [], [], []
      for i in range(self.num_clients):
        order = rng.permutation(n[i])
        held = min(max(1, round(validation_fraction * n[i])), n[i] - 1)
        if held < 1:
          raise ValueError(f'client {i} holds {n[i]} example(s): too few to '
                           'keep a validation split')
        vxs.append(x[i, order[:held]])
        vys.append(y[i, order[:held]])
        xs.append(x[i, order[held:]])
        ys.append(y[i, order[held:]])
      train = FederatedData.from_clients(xs, ys, data.test_x, data.test_y,
                                         self.num_classes)
      val = FederatedData.from_clients(vxs, vys, data.test_x, data.test_y,
                                       self.num_classes)
      data = data.replace(x=train.x, y=train.y, n=train.n, val_x=val.x,
                          val_y=val.y, val_n=val.n)
    return data

  def describe(self) -> str:
    n = np.asarray(self.n)
    extra = ''
    if self.proxy_y is not None:
      extra += f', {len(self.proxy_y)} server proxy examples'
    if self.val_n is not None:
      extra += f', {int(np.sum(self.val_n))} client validation examples'
    return (f'{self.num_clients} clients, {int(n.sum())} train examples '
            f'(per client min {n.min()}, median {int(np.median(n))}, max '
            f'{n.max()}), {len(self.test_y)} test examples{extra}, '
            f'{self.num_classes} classes, padding waste '
            f'{self.padding_waste:.1%}')
