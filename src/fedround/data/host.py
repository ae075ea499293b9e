"""Federations kept on the host (``config.data.placement='host'``).

The training examples stay in host memory (NumPy arrays, or memory-mapped
ones); the device holds the model, the per-client store and, for each
round of a chunk, only the cohort's examples. Participation never depends
on training, so the cohorts of the next rounds follow from the server
state alone (``Round.cohorts``, the draws the round itself makes): while
the device trains chunk k, a host thread gathers and packs the examples of
chunk k + 1 and copies them to the devices.
"""
from __future__ import annotations

import concurrent.futures
import time
from typing import Callable

import jax
import numpy as np

from fedround.data.federated import ClientData


def capacity(train: ClientData, buffer: int) -> int:
  """Rows that hold any cohort of ``buffer`` clients: the sizes of the
  ``buffer`` largest clients summed (one compiled round for the run)."""
  n = np.sort(np.asarray(train.n))[::-1]
  return int(n[:buffer].sum())


def pack(train: ClientData, ids: np.ndarray, rows: int) -> ClientData:
  """Each round's cohort (``ids`` int32[R, B]) as its own ClientData, with
  a leading axis of the R rounds: the clients of the round's buffer in id
  order, then padding up to ``rows``; every other client has n = 0. A
  cohort's clients read exactly the rows they read in the full
  federation."""
  starts, counts = np.asarray(train.start), np.asarray(train.n)
  num_clients = len(counts)
  xs, ys, round_starts, round_counts = [], [], [], []
  for cohort in np.asarray(ids):
    members = np.unique(cohort)
    n = np.zeros(num_clients, np.int32)
    n[members] = counts[members]
    lengths = counts[members]
    offsets = np.cumsum(lengths) - lengths
    index = (np.repeat(starts[members] - offsets, lengths)
             + np.arange(lengths.sum()))
    if len(index) > rows:
      raise ValueError(f'a cohort holds {len(index)} rows, more than the '
                       f'{rows} packed')
    index = np.concatenate([index, np.full(rows - len(index), index[-1])])
    xs.append(np.asarray(train.x[index]))
    ys.append(np.asarray(train.y[index]))
    round_counts.append(n)
    round_starts.append((np.cumsum(n) - n).astype(np.int32))
  return ClientData(x=np.stack(xs), y=np.stack(ys),
                    start=np.stack(round_starts), n=np.stack(round_counts),
                    max_examples=train.max_examples)


class HostFeed:
  """Each chunk's packed cohorts, the next chunk's prepared in a thread.

  ``take(state)`` returns the chunk starting at ``state``; call it with the
  state before it is donated. ``cohorts(state, 2 R)`` must be the jitted
  ``Round.cohorts``; ``place`` puts a packed chunk on the devices.
  """

  def __init__(self, train: ClientData, cohorts: Callable, rounds: int,
               rows: int, place: Callable):
    self.train, self.cohorts, self.rounds = train, cohorts, rounds
    self.rows, self.place = rows, place
    self.pool = concurrent.futures.ThreadPoolExecutor(1)
    self.pending = None  # (ids, future) of the chunk prepared ahead
    self.prefetched = 0  # chunks taken from the thread, not packed late
    self.wait_seconds = 0.0  # time take() waited for packing

  def _prepare(self, ids):
    return self.place(pack(self.train, ids, self.rows))

  def take(self, state):
    ids = np.asarray(jax.device_get(self.cohorts(state, 2 * self.rounds)))
    now, ahead = ids[:self.rounds], ids[self.rounds:]
    t0 = time.perf_counter()
    if self.pending is not None and np.array_equal(self.pending[0], now):
      trains = self.pending[1].result()
      self.prefetched += 1
    else:  # the first chunk, or a state the feed did not foresee
      trains = self._prepare(now)
    self.wait_seconds += time.perf_counter() - t0
    self.pending = (ahead, self.pool.submit(self._prepare, ahead))
    return trains

  def close(self):
    self.pool.shutdown(wait=True, cancel_futures=True)


def packed_shapes(train: ClientData, rounds: int, rows: int, mesh=None):
  """The shapes (and, on a mesh, the replicated sharding) of ``pack``'s
  output for ``rounds`` rounds, to compile the chunk before any packing."""
  from jax.sharding import NamedSharding, PartitionSpec
  sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec())
  shape = lambda dtype, *dims: jax.ShapeDtypeStruct((rounds, *dims), dtype,
                                                    sharding=sharding)
  num_clients = train.num_clients
  return ClientData(x=shape(train.x.dtype, rows, *train.x.shape[1:]),
                    y=shape(train.y.dtype, rows, *train.y.shape[1:]),
                    start=shape(np.int32, num_clients),
                    n=shape(np.int32, num_clients),
                    max_examples=train.max_examples)
