"""Helpers for rules on a stack of client updates (leaves [C, ...]).

Robust rules treat every present client (weight > 0) alike and ignore the
rest: absent slots (cohort padding, excluded non-finite updates) never enter
a median, a distance or a mean. Distance-based rules work from the C x C
Gram matrix summed over leaves, never from a flattened d-vector per pair.

Finite but huge updates never overflow: squares of float32 values above
1.8e19 would, so distances come from a stack divided by a power of two
(``scale``) that brings its largest value to at most 1, and norms from each
row divided by its own (``norms``, ``unit_gram``). Dividing by a power of
two is exact, so ordinary stacks give the same distances as before.
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


def _power_of_two_at_least(x: jax.Array) -> jax.Array:
  """A power of two >= x (1 for x = 0), kept within 2**-126 .. 2**125 so
  that its reciprocal is a normal float32 too (XLA may divide by
  multiplying with the reciprocal, and subnormals flush to zero)."""
  exponent = jnp.ceil(jnp.log2(jnp.where(x > 0, x, 1.0)))
  return jnp.ldexp(jnp.float32(1),
                   jnp.clip(exponent, -126, 125).astype(jnp.int32))


def _row_largest(updates) -> jax.Array:
  """float32[C]: each row's largest |value| over all leaves."""
  return jnp.max(jnp.stack([
      jnp.max(jnp.abs(u.reshape(u.shape[0], -1)), axis=1).astype(jnp.float32)
      for u in jax.tree.leaves(updates)]), axis=0)


def scale(updates, mask: jax.Array) -> jax.Array:
  """A power of two >= the largest |value| of the present rows (1 when
  they are all zero): ``updates / scale`` squares without overflow."""
  return _power_of_two_at_least(
      jnp.max(jnp.where(mask, _row_largest(updates), 0.0)))


def divided(updates, by: jax.Array):
  return jax.tree.map(lambda u: u / by.astype(u.dtype), updates)


def row_scaled(updates, mask: jax.Array):
  """(v, s): v_i = u_i / s_i on the ``mask`` rows (zero elsewhere), s_i
  a power of two >= the row's largest |value| (``_power_of_two_at_least``),
  so ||v_i|| <= 8 sqrt(d) and u_i = s_i v_i exactly."""
  scales = _power_of_two_at_least(jnp.where(mask, _row_largest(updates), 0.0))
  return jax.tree.map(
      lambda u: jnp.where(rows(mask, u), u / rows(scales, u).astype(u.dtype),
                          0), updates), scales


def norms(updates) -> jax.Array:
  """float32[C]: ||u_i|| summed over leaves, without overflow (from
  ``row_scaled``); +inf only when the norm itself exceeds float32."""
  scaled, scales = row_scaled(updates, jnp.ones(
      jax.tree.leaves(updates)[0].shape[0], bool))
  return scales * jnp.sqrt(sq_norms(scaled))


def unit_gram(scaled) -> tuple[jax.Array, jax.Array]:
  """(<v_i / ||v_i||, v_j / ||v_j||>, ||v_i||) of ``row_scaled`` rows v:
  the cosines of the updates, never overflowing; zero rows give zeros."""
  g = gram(scaled)
  reduced = jnp.sqrt(jnp.diagonal(g))
  inverse = jnp.where(reduced > 0, 1 / jnp.where(reduced > 0, reduced, 1), 0)
  return g * inverse[:, None] * inverse[None, :], reduced


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
  best = jnp.argmin(jnp.where(mask, norms(updates), jnp.inf))
  return jax.tree.map(
      lambda u: jnp.where(jnp.any(mask), u[best], jnp.zeros_like(u[0])),
      updates)


def robust_gram(updates, mask: jax.Array) -> jax.Array:
  """The Gram matrix of the present updates centred on ``anchor``, divided
  by their ``scale`` squared (so it never overflows).

  Distances are translation-invariant, but a Gram matrix of raw updates
  loses them to cancellation when every update sits far from the origin or
  an outlier sits 1e6 away; centring on an honest-scale update keeps the
  honest updates near 0.
  """
  masked = zero_absent(updates, mask)
  offsets = centered(masked, anchor(masked, mask))
  return gram(divided(offsets, scale(offsets, mask)))


def sq_distances(updates, mask: jax.Array) -> jax.Array:
  """[C, C] squared distances between present updates, up to one positive
  factor (the stack's ``scale`` squared: comparisons are exact, and nothing
  overflows); +inf where either client is absent or a distance is not
  finite, 0 on the diagonal of present clients."""
  d = distances_from_gram(robust_gram(updates, mask))
  both = mask[:, None] & mask[None, :]
  d = jnp.where(both & jnp.isfinite(d), d, jnp.inf)
  return jnp.where(jnp.eye(d.shape[0], dtype=bool) & both, 0.0, d)


def sq_norms(updates) -> jax.Array:
  """float[C]: ||u_i||^2 summed over leaves."""
  return sum(jnp.sum(u.reshape(u.shape[0], -1).astype(jnp.float32) ** 2,
                     axis=1) for u in jax.tree.leaves(updates))
