"""Flag Aggregator (Almasi et al., "Flag Aggregator: Scalable Distributed
Training under Failures and Augmented Losses using Convex Optimization",
ICLR 2024; code hamidralmasi/FlagAggregator), ALGORITHMS.md section 2.

The rule works in the span of the normalised updates x_i = g_i / ||g_i||
(the columns of X), so everything runs on their C x C Gram matrix
G = X^T X: a subspace is Y = X A with A a C x r coefficient matrix, the
projections Y^T x_i are the columns of A^T G, and the top-r left singular
vectors of a weighted matrix X M come from a C x C eigenproblem
(``_weighted_basis``). No d x d or d x r matrix is ever formed; the
aggregate is one combination of the raw updates.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, stateless


def flag_aggregator(rank: int = 1, iterations: int = 1, lam: float = 0.0,
                    eps: float = 1e-7,
                    num_clients: int | None = None) -> Aggregator:
  """The Flag Aggregator (Almasi et al., ICLR 2024).

  Finds an r-dimensional subspace Y of the normalised updates by IRLS on
  sum_i sqrt(1 - ||Y^T x_i||^2): each step scales x_i by
  w_i = (|1 - ||Y^T x_i||^2| + eps)^(-1/4), adds (when ``lam`` > 0) the
  columns w_ij (x_i - x_j) lam / (n(n-1)) for ordered pairs i != j, with
  w_ij = (|1 - ||Y^T (x_i - x_j)||^2| + eps)^(-1/4) as in the official
  code, takes the top-r left singular vectors, and keeps them only if the
  objective decreases (a rejected step would recur, so this is the official
  early stop). The aggregate is (1/r) sum_i Y Y^T x_i.

  The official code starts from a random Y; here the start is a Y
  orthogonal to every update (the limit of a random start in high
  dimension), so the first step weighs every client alike (Y = the top-r
  principal directions of the x_i) and the rule is a pure function of its
  inputs. ``iterations`` counts IRLS steps from that start. Every present
  client counts once, whatever its weight; absent clients and zero updates
  take no part (n counts the rest); with none left the aggregate is zero.
  """
  if not isinstance(rank, int) or rank < 1:
    raise ValueError(f'rank is the dimension of the subspace the updates '
                     f'are projected on and must be an integer >= 1, got '
                     f'{rank!r}')
  if num_clients is not None and rank > num_clients:
    raise ValueError(f'rank={rank} exceeds num_clients={num_clients}: the '
                     'updates span at most num_clients dimensions, so rank '
                     f'must be in 1..{num_clients}')
  if not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f'iterations (IRLS steps) must be an integer >= 1, got '
                     f'{iterations!r}')
  if not lam >= 0:
    raise ValueError(f'lam (the pairwise regulariser strength) must be >= 0, '
                     f'got {lam!r}')
  if not eps > 0:
    raise ValueError(f'eps (which keeps the IRLS weights finite) must be > 0, '
                     f'got {eps!r}')

  def aggregate(updates, weights):
    present = stack.present(weights)
    # Rows divided by their own power-of-two scale: u_i = s_i v_i, and
    # u_i / ||u_i|| = v_i / ||v_i||, so nothing overflows.
    scaled, _ = stack.row_scaled(updates, present)
    unit_gram, norms = stack.unit_gram(scaled)
    used = present & (norms > 0)
    inverse_norms = jnp.where(used, 1 / jnp.where(used, norms, 1), 0)
    # The C x C algebra is cheap: keep it in full float32 on every backend.
    with jax.default_matmul_precision('highest'):
      basis = _flag_subspace(unit_gram, used, min(rank, weights.shape[0]),
                             iterations, lam, eps)
      # (1/r) Y Y^T sum_i x_i = X A A^T G 1_used / r.
      coefficients = basis @ (basis.T @ (
          unit_gram @ used.astype(unit_gram.dtype)))
    return stack.combine(scaled, coefficients * inverse_norms / rank)

  return stateless(aggregate)


def flag_rescaled(rank: int = 1, iterations: int = 1, lam: float = 0.0,
                  eps: float = 1e-7,
                  num_clients: int | None = None) -> Aggregator:
  """The Flag Aggregator's direction at the updates' scale: its output
  rescaled to the median norm of the present updates.

  The Flag Aggregator (Almasi et al., ICLR 2024) averages unit-length
  updates, so its step length ignores how large the updates are (about
  n_used / r for aligned updates, whatever their norm); this variant keeps
  its direction and takes the step length of a typical client, so it
  compares with rules that return an update of the clients' own scale.
  The median norm is robust: fewer than half the clients cannot move it
  past the honest norms. Not in the paper.
  """
  flag = flag_aggregator(rank, iterations, lam, eps, num_clients)

  def aggregate(updates, weights):
    present = stack.present(weights)
    direction, _ = flag.update(updates, (), weights=weights)
    target = stack.masked_median(stack.norms(updates), present)
    length = stack.norms(jax.tree.map(lambda d: d[None], direction))[0]
    factor = jnp.where(length > 0, target / jnp.where(length > 0, length, 1),
                       0)
    return jax.tree.map(lambda d: (d * factor).astype(d.dtype), direction)

  return stateless(aggregate)


def _flag_subspace(unit_gram, used, rank, iterations, lam, eps):
  """IRLS for the flag median; returns Y's coefficients A (C x rank)."""

  def step(_, carry):
    basis, objective = carry
    candidate = _weighted_basis(unit_gram, _projected_gram(unit_gram, basis),
                                used, rank, lam, eps)
    candidate_objective = _sine_objective(
        _projected_gram(unit_gram, candidate), used)
    better = candidate_objective < objective
    return (jnp.where(better, candidate, basis),
            jnp.where(better, candidate_objective, objective))

  # A = 0 stands for a Y orthogonal to every update: Y^T x_i = 0.
  start = jnp.zeros((unit_gram.shape[0], rank), unit_gram.dtype)
  start_objective = _sine_objective(_projected_gram(unit_gram, start), used)
  basis, _ = jax.lax.fori_loop(0, iterations, step, (start, start_objective))
  return basis


def _projected_gram(unit_gram, basis):
  """<Y^T x_i, Y^T x_j> for Y = X A: the Gram matrix of the columns of A^T G."""
  projections = basis.T @ unit_gram
  return projections.T @ projections


def _sine_objective(projected_gram, used):
  """sum_i sqrt(max(0, 1 - ||Y^T x_i||^2)) over the clients used."""
  sines = jnp.sqrt(jnp.maximum(1 - jnp.diagonal(projected_gram), 0))
  return jnp.sum(jnp.where(used, sines, 0))


def _weighted_basis(unit_gram, projected_gram, used, rank, lam, eps):
  """Top-r left singular vectors of the reweighted matrix X M, as A.

  (X M)(X M)^T = X K X^T with K = M M^T (C x C). With R = K^(1/2) and the
  eigenpairs R G R = V S V^T, the top eigenvectors of X K X^T are
  Y = X R V S^(-1/2), so A = R V S^(-1/2): Y^T Y = I. Directions with a
  negligible eigenvalue are orthogonal to every update and dropped.
  """
  sq_weights = jnp.where(
      used, (jnp.abs(1 - jnp.diagonal(projected_gram)) + eps) ** -0.5, 0)
  mixing = jnp.diag(sq_weights)
  if lam > 0:
    # Columns s_ij (x_i - x_j) = X s_ij (e_i - e_j) over ordered pairs i != j
    # add sum s_ij^2 (e_i - e_j)(e_i - e_j)^T = 2 (diag(S 1) - S) to K.
    count = jnp.sum(used)
    scale = lam / jnp.maximum(count * (count - 1), 1)
    pair_sq_norms = stack.distances_from_gram(projected_gram)
    pairs = used[:, None] & used[None, :] & ~jnp.eye(len(used), dtype=bool)
    pair_sq_weights = jnp.where(
        pairs, (jnp.abs(1 - pair_sq_norms) + eps) ** -0.5 * scale**2, 0)
    mixing += 2 * (jnp.diag(jnp.sum(pair_sq_weights, axis=1))
                   - pair_sq_weights)
  root = _psd_sqrt(mixing)
  values, vectors = jnp.linalg.eigh(root @ unit_gram @ root)
  values, vectors = values[::-1][:rank], vectors[:, ::-1][:, :rank]
  tolerance = (jnp.finfo(values.dtype).eps * len(used)
               * jnp.maximum(values[0], jnp.finfo(values.dtype).tiny))
  kept = values > tolerance
  return root @ vectors * jnp.where(kept, jax.lax.rsqrt(
      jnp.where(kept, values, 1)), 0)


def _psd_sqrt(matrix):
  """The symmetric square root of a positive semi-definite matrix."""
  values, vectors = jnp.linalg.eigh(matrix)
  return (vectors * jnp.sqrt(jnp.maximum(values, 0))) @ vectors.T
