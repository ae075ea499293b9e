"""Pre-aggregators (ALGORITHMS.md section 2): maps of the client stack
[C, ...] -> [C', ...] that compose before any rule through ``base.chain``.

Only present clients (weight > 0) are read. Clipping, NNM and ARC keep the
client slots and pass the weights through, so absent clients stay absent
(their output rows are zero); bucketing outputs one slot per bucket.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.aggregators.base import PreAggregator, RoundContext


def clip(max_norm: float) -> PreAggregator:
  """Norm clipping: u_i * min(1, max_norm / ||u_i||), the norm taken over
  all leaves together."""
  if not max_norm > 0:
    raise ValueError(f'max_norm (the largest update norm let through) must be '
                     f'> 0, got {max_norm!r}')

  def transform(updates, weights, key):
    del key
    norms = stack.norms(updates)
    return _clipped(updates, norms, max_norm, stack.present(weights)), weights

  return _pre_aggregator(transform)


def nnm(f: int, num_clients: int | None = None) -> PreAggregator:
  """Nearest Neighbour Mixing (Allouah et al., "Fixing by Mixing", AISTATS
  2023): each present update becomes the mean of its n - f nearest present
  updates, itself included (n = present count at run time; ties go to the
  lower index; at least the update itself when n <= f)."""
  _check_f('nnm', f, num_clients, 'it averages the n - f nearest updates, '
           'so at least one must remain')

  def transform(updates, weights, key):
    del key
    present = stack.present(weights)
    distances = stack.sq_distances(updates, present)
    # Each update ranks itself first, even against an exact duplicate.
    distances = jnp.where(jnp.eye(len(present), dtype=bool), -1, distances)
    order = jnp.argsort(distances, axis=1, stable=True)
    neighbour_rank = jnp.argsort(order, axis=1)
    count = jnp.maximum(jnp.sum(present) - f, 1)
    # Absent clients sit at +inf, after every present one: never chosen.
    neighbours = (neighbour_rank < count) & present[:, None]
    mixing = neighbours / count
    return stack.combine(stack.zero_absent(updates, present), mixing), weights

  return _pre_aggregator(transform)


def bucketing(size: int) -> PreAggregator:
  """Bucketing (Karimireddy, He, Jaggi, "Byzantine-robust learning on
  heterogeneous datasets via bucketing", ICLR 2022): shuffle the present
  clients with ``key`` and average consecutive groups of ``size``.

  The output has ceil(C / size) slots; absent clients are shuffled to the
  end, so buckets hold present clients only and the last non-empty one may
  be partial. A non-empty bucket has weight 1, an empty one weight 0.
  """
  if not isinstance(size, int) or size < 1:
    raise ValueError(f'size (clients per bucket) must be an integer >= 1, got '
                     f'{size!r}')

  def num_buckets(num_clients):
    return math.ceil(num_clients / size)

  def transform(updates, weights, key):
    present = stack.present(weights)
    num_clients = len(present)
    shuffled = jax.random.permutation(key, num_clients)
    order = shuffled[jnp.argsort(~present[shuffled], stable=True)]
    bucket = jnp.zeros(num_clients, jnp.int32).at[order].set(
        jnp.arange(num_clients) // size)
    slots = jnp.arange(num_buckets(num_clients))
    members = (bucket[None, :] == slots[:, None]) & present[None, :]
    counts = jnp.sum(members, axis=1)
    means = stack.combine(stack.zero_absent(updates, present),
                          members / jnp.maximum(counts, 1)[:, None])
    return means, (counts > 0).astype(weights.dtype)

  return _pre_aggregator(transform, num_buckets)


def arc(f: int, num_clients: int | None = None) -> PreAggregator:
  """Adaptive Robust Clipping (Allouah et al., "Adaptive Gradient Clipping
  for Robust Federated Learning", ICLR 2025; ByzFL's ARC): the
  k = floor(2 f (n - f) / n) largest-norm updates are clipped to the norm of
  the (n - k)-th smallest, n = the present count at run time (k = 0 when
  n <= f). k is computed in integers, exactly."""
  _check_f('arc', f, num_clients, 'it clips k = floor(2f(n - f)/n) updates, '
           'which is only meaningful for f < n')

  def transform(updates, weights, key):
    del key
    present = stack.present(weights)
    norms = stack.norms(updates)
    count = jnp.sum(present)
    num_clipped = jnp.maximum(2 * f * (count - f) // jnp.maximum(count, 1), 0)
    ascending = jnp.sort(jnp.where(present, norms, jnp.inf))
    threshold = ascending[jnp.clip(count - num_clipped - 1, 0, len(norms) - 1)]
    return _clipped(updates, norms, threshold, present), weights

  return _pre_aggregator(transform)


def _pre_aggregator(transform, num_outputs=lambda num_clients: num_clients):
  """A PreAggregator from ``transform(updates, weights, key) -> (updates',
  weights')``."""

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, context
    return transform(updates, weights, key), state

  return PreAggregator(lambda params: (), update, num_outputs)


def _check_f(name, f, num_clients, reason):
  if not isinstance(f, int) or f < 0:
    raise ValueError(f'f (the number of Byzantine clients to tolerate) must '
                     f'be an integer >= 0, got {f!r}')
  if num_clients is not None and num_clients <= f:
    raise ValueError(f'{name} needs num_clients > f ({reason}), got '
                     f'num_clients={num_clients}, f={f}')



def _clipped(updates, norms, max_norm, present):
  """Present updates scaled by min(1, max_norm / ||u_i||), absent ones zero."""
  tiny = jnp.finfo(norms.dtype).tiny
  scale = jnp.minimum(1, max_norm / jnp.maximum(norms, tiny))
  return jax.tree.map(
      lambda u: jnp.where(stack.rows(present, u),
                          u * stack.rows(scale, u).astype(u.dtype), 0),
      updates)
