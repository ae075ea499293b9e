"""FederatedData: every client's examples stored flat, without padding.

A federation keeps each split's examples in one array per feature, client by
client (CSR-style: client i owns rows ``start[i] : start[i] + n[i]``), so
memory is the examples' size, not N x max_n. Clients gather the rows they
read through their offsets inside the jit (``ClientData.rows``).
"""
from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class ClientData:
  """Every client's examples, flat.

  x: [T, ...] features, y: [T, ...] labels, client by client.
  start: int32[N], the first row of each client, ascending.
  n: int32[N], each client's example count (>= 1).
  max_examples: the largest n, static (the shape of a client's schedule).
  Rows between one client's last and the next one's start (a padded
  layout) are never read.
  """
  x: jax.Array
  y: jax.Array
  start: jax.Array
  n: jax.Array
  max_examples: int = flax.struct.field(pytree_node=False)

  @property
  def num_clients(self) -> int:
    return self.n.shape[0]

  def rows(self, client, idx):
    """(x, y) of ``client``'s examples ``idx`` (any shape of int32 in
    [0, max_examples)); an index past its count reads its last example
    (callers mask those)."""
    start, n, x, y = map(jnp.asarray, (self.start, self.n, self.x, self.y))
    row = start[client] + jnp.minimum(idx, n[client] - 1)
    return x[row], y[row]

  def gather(self, clients):
    """(x [C, max_n, ...], y [C, max_n, ...], valid bool[C, max_n]) of
    ``clients`` (int32[C]), each padded with repeats of its last example."""
    slots = jnp.arange(self.max_examples)
    x, y = jax.vmap(lambda i: self.rows(i, slots))(clients)
    return x, y, slots[None, :] < jnp.asarray(self.n)[clients][:, None]

  def owner(self) -> jax.Array:
    """int32[T]: the client each row belongs to; -1 for rows no client
    owns (padding between clients)."""
    start, n = jnp.asarray(self.start), jnp.asarray(self.n)
    rows = jnp.arange(self.x.shape[0])
    owner = jnp.searchsorted(start, rows, side='right') - 1
    mine = rows < start[owner] + n[owner]
    return jnp.where(mine & (owner >= 0), owner, -1).astype(jnp.int32)

  def client(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``i``'s (x, y) on the host."""
    begin, count = int(self.start[i]), int(self.n[i])
    return (np.asarray(self.x[begin:begin + count]),
            np.asarray(self.y[begin:begin + count]))

  @property
  def nbytes(self) -> int:
    """Bytes stored: the examples, labels and offsets."""
    return sum(np.asarray(a).nbytes for a in (self.x, self.y, self.start,
                                              self.n))

  @property
  def padded_nbytes(self) -> int:
    """Bytes the padded [N, max_n, ...] layout would store."""
    per_row = sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape[1:]))
                  for a in (self.x, self.y))
    return (self.num_clients * self.max_examples * per_row
            + np.asarray(self.n).nbytes)

  @classmethod
  def from_clients(cls, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                   x_dtype=np.float32) -> 'ClientData':
    """Concatenates per-client (x, y) arrays; x cast to ``x_dtype``,
    integer labels to int32."""
    if len(xs) != len(ys) or not xs:
      raise ValueError(f'need one y per x and at least one client; got '
                       f'{len(xs)} x and {len(ys)} y arrays')
    counts = np.array([len(x) for x in xs], np.int32)
    if (counts == 0).any():
      raise ValueError(f'clients {np.flatnonzero(counts == 0).tolist()} hold '
                       'no examples')
    y = np.concatenate([np.asarray(y) for y in ys])
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
      y = y.astype(np.int32)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    return cls(x=np.concatenate([np.asarray(x, x_dtype) for x in xs]), y=y,
               start=start, n=counts, max_examples=int(counts.max()))

  @classmethod
  def from_padded(cls, x: np.ndarray, y: np.ndarray,
                  n: np.ndarray) -> 'ClientData':
    """The padded layout (x [N, max_n, ...], y [N, max_n, ...], counts n)
    kept as it is: client i's rows start at i * max_n, padding unread."""
    num_clients, max_n = np.shape(y)[:2]
    flat = lambda a: np.reshape(a, (num_clients * max_n,) + np.shape(a)[2:])
    return cls(x=flat(x), y=flat(y),
               start=np.arange(num_clients, dtype=np.int32) * max_n,
               n=np.asarray(n, np.int32), max_examples=int(max_n))


@flax.struct.dataclass
class FederatedData:
  """The clients' training examples plus a pooled test split.

  train: every client's training examples (ClientData).
  test_x, test_y: the held-out split, pooled over clients.
  proxy_x, proxy_y: a small class-balanced server proxy set taken out of
    the test split (``with_splits``), or None.
  validation: each client's validation examples, taken out of its
    training examples (``with_splits``), or None.
  """
  train: ClientData
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int = flax.struct.field(pytree_node=False)
  proxy_x: jax.Array | None = None
  proxy_y: jax.Array | None = None
  validation: ClientData | None = None

  @property
  def num_clients(self) -> int:
    return self.train.num_clients

  @property
  def max_examples(self) -> int:
    return self.train.max_examples

  @property
  def n(self) -> jax.Array:
    """int32[N]: each client's training examples."""
    return self.train.n

  @property
  def example_shape(self) -> tuple[int, ...]:
    return tuple(self.train.x.shape[1:])

  @classmethod
  def from_clients(cls, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                   test_x: np.ndarray, test_y: np.ndarray,
                   num_classes: int, x_dtype=np.float32) -> 'FederatedData':
    """A federation of per-client (x, y) arrays and a test split, x cast
    to ``x_dtype``."""
    return cls(train=ClientData.from_clients(xs, ys, x_dtype),
               test_x=np.asarray(test_x, x_dtype),
               test_y=np.asarray(test_y, np.int32), num_classes=num_classes)

  @property
  def label_counts(self) -> np.ndarray:
    """int[N, L]: each client's training labels per class (tokens per id
    for sequence labels)."""
    y, start, n = (np.asarray(a) for a in (self.train.y, self.train.start,
                                           self.train.n))
    return np.stack([np.bincount(y[s:s + c].ravel(),
                                 minlength=self.num_classes)
                     [:self.num_classes] for s, c in zip(start, n)])

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
      xs, ys, vxs, vys = [], [], [], []
      for i in range(self.num_clients):
        x, y = self.train.client(i)
        order = rng.permutation(len(y))
        held = min(max(1, round(validation_fraction * len(y))), len(y) - 1)
        if held < 1:
          raise ValueError(f'client {i} holds {len(y)} example(s): too few '
                           'to keep a validation split')
        vxs.append(x[order[:held]])
        vys.append(y[order[:held]])
        xs.append(x[order[held:]])
        ys.append(y[order[held:]])
      dtype = self.train.x.dtype
      data = data.replace(train=ClientData.from_clients(xs, ys, dtype),
                          validation=ClientData.from_clients(vxs, vys, dtype))
    return data

  def describe(self) -> str:
    n = np.asarray(self.n)
    extra = ''
    if self.proxy_y is not None:
      extra += f', {len(self.proxy_y)} server proxy examples'
    if self.validation is not None:
      extra += (f', {int(np.sum(self.validation.n))} client validation '
                'examples')
    mib = lambda b: f'{b / 2**20:.1f} MiB'
    return (f'{self.num_clients} clients, {int(n.sum())} train examples '
            f'(per client min {n.min()}, median {int(np.median(n))}, max '
            f'{n.max()}), {len(self.test_y)} test examples{extra}, '
            f'{self.num_classes} classes, {mib(self.train.nbytes)} stored'
            f'{" on disk (memory-mapped)" if isinstance(self.train.x, np.memmap) else ""} '
            f'(padded [N, max_n] layout: {mib(self.train.padded_nbytes)})')
