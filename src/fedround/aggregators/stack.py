"""Helpers for rules on a stack of client updates (leaves [C, ...]).

Robust rules treat every present client (weight > 0) alike and ignore the
rest: absent slots (cohort padding, excluded non-finite updates) never enter
a median, a distance or a mean. Distance-based rules work from the C x C
Gram matrix summed over leaves, never from a flattened d-vector per pair.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def present(weights: jax.Array) -> jax.Array:
  """bool[C]: the clients a rule may use."""
  return weights > 0


def rows(mask: jax.Array, leaf: jax.Array) -> jax.Array:
  """``mask`` [C] shaped to broadcast against ``leaf`` [C, ...]."""
  return mask.reshape((-1,) + (1,) * (leaf.ndim - 1))


def combine(updates, coefficients: jax.Array):
  """sum_i coefficients[i] * updates[i], shaped like one update."""
  return jax.tree.map(
      lambda u: jnp.tensordot(coefficients.astype(u.dtype), u, axes=1,
                              precision=HIGHEST), updates)


def mean_of(updates, selected: jax.Array):
  """The mean of the ``selected`` updates (zero when none is)."""
  count = jnp.sum(selected)
  return combine(updates, selected / jnp.maximum(count, 1))


def zero_absent(updates, mask: jax.Array):
  """The stack with the rows where ``mask`` is False set to zero."""
  return jax.tree.map(lambda u: jnp.where(rows(mask, u), u, 0), updates)


def masked_median(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-coordinate median over axis 0 of the rows where ``mask`` is set
  (the mean of the two middle values for an even count; 0 when none)."""
  m = rows(mask, x)
  ordered = jnp.sort(jnp.where(m, x, jnp.inf), axis=0)
  n = jnp.sum(mask)
  lo = jnp.maximum((n - 1) // 2, 0)
  hi = jnp.maximum(n // 2, 0)
  take = lambda i: jax.lax.dynamic_index_in_dim(ordered, i, 0, keepdims=False)
  return jnp.where(n > 0, (take(lo) + take(hi)) / 2, 0).astype(x.dtype)


def coordinate_median(updates, mask: jax.Array):
  """The coordinate-wise median of the present updates, per leaf."""
  return jax.tree.map(lambda u: masked_median(u, mask), updates)


def centered(updates, center):
  return jax.tree.map(lambda u, c: u - c[None], updates, center)


def gram(updates) -> jax.Array:
  """G[i, j] = <u_i, u_j> summed over leaves, in float32."""
  def leaf_gram(u):
    flat = u.reshape(u.shape[0], -1).astype(jnp.float32)
    return jnp.dot(flat, flat.T, precision=HIGHEST)
  return sum(leaf_gram(u) for u in jax.tree.leaves(updates))


def distances_from_gram(g: jax.Array) -> jax.Array:
  """Squared distances ||u_i - u_j||^2 from a Gram matrix (clamped >= 0)."""
  diag = jnp.diagonal(g)
  return jnp.maximum(diag[:, None] + diag[None, :] - 2 * g, 0.0)


def anchor(updates, mask: jax.Array):
  """The present update of smallest norm (zeros when none): an O(C d)
  centre at the honest updates' scale, since far outliers have large norms.
  (A coordinate-wise median would do too, but sorting C values per
  coordinate costs far more than the Gram matrix itself on XLA:CPU.)"""
  norms = jnp.where(mask, sq_norms(updates), jnp.inf)
  best = jnp.argmin(norms)
  return jax.tree.map(
      lambda u: jnp.where(jnp.any(mask), u[best], jnp.zeros_like(u[0])),
      updates)


def robust_gram(updates, mask: jax.Array) -> jax.Array:
  """The Gram matrix of the present updates centred on ``anchor``.

  Distances are translation-invariant, but a Gram matrix of raw updates
  loses them to cancellation when every update sits far from the origin or
  an outlier sits 1e6 away; centring on an honest-scale update keeps the
  honest updates near 0.
  """
  masked = zero_absent(updates, mask)
  return gram(centered(masked, anchor(masked, mask)))


def sq_distances(updates, mask: jax.Array) -> jax.Array:
  """[C, C] squared distances between present updates; +inf where either
  client is absent, 0 on the diagonal of present clients."""
  d = distances_from_gram(robust_gram(updates, mask))
  both = mask[:, None] & mask[None, :]
  d = jnp.where(both, d, jnp.inf)
  return jnp.where(jnp.eye(d.shape[0], dtype=bool) & both, 0.0, d)


def sq_norms(updates) -> jax.Array:
  """float[C]: ||u_i||^2 summed over leaves."""
  return sum(jnp.sum(u.reshape(u.shape[0], -1).astype(jnp.float32) ** 2,
                     axis=1) for u in jax.tree.leaves(updates))
