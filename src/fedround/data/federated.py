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
  """
  x: jax.Array
  y: jax.Array
  n: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int = flax.struct.field(pytree_node=False)

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

  def describe(self) -> str:
    n = np.asarray(self.n)
    return (f'{self.num_clients} clients, {int(n.sum())} train examples '
            f'(per client min {n.min()}, median {int(np.median(n))}, max '
            f'{n.max()}), {len(self.test_y)} test examples, '
            f'{self.num_classes} classes, padding waste '
            f'{self.padding_waste:.1%}')
