"""Model-merging rules (ALGORITHMS.md section 1): Fisher-weighted merging
and variance-corrected averaging, defined on full client models
w_i = w + Delta_i, and FedLD's principal-direction aggregation of the
deltas.

Each returns the aggregate the server adds to w (merged - w for the rules
on full models). Absent clients (weight 0) take no part whatever their
rows hold; with nobody present every rule returns zeros, so the global
model stays where it is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, Reads, RoundContext
from fedround.client import ClientOutput

# Leaf names of normalisation statistics: Flax's 'batch_stats' collection
# and the running statistics of PyTorch state dicts, which the official
# variance-correction code skips (twoentartian/DFL_torch,
# py_src/special_torch_layers.py).
NORMALISATION_STATISTICS = frozenset(
    {'batch_stats', 'running_mean', 'running_var', 'num_batches_tracked'})
VARIANCE_EPSILON = 1e-4  # the official code's epsilon in the rescaling


def fisher_merging(floor: float = 1e-6) -> Aggregator:
  """Fisher-weighted merging (Matena & Raffel, "Merging Models with
  Fisher-Weighted Averaging", NeurIPS 2022; code mmatena/model_merging):
  w = sum_i lambda_i F_i w_i / sum_i lambda_i F_i elementwise, with
  lambda_i = n_i (the weights), F_i the client's diagonal Fisher
  (``fedround.fisher.diagonal_fisher``, passed as the ``fisher`` keyword)
  floored at ``floor``. Computed on deltas, which is the same merge
  (sum_i lambda_i F_i Delta_i / sum_i lambda_i F_i = merged - w) without
  the cancellation of subtracting w. F_i = 1 gives FedAvg.

  The official code floors only the first ("target") model's Fisher and by
  default divides each lambda_i by the L2 norm of F_i over the whole model;
  federated clients have no target and ALGORITHMS.md has no normalisation,
  so every Fisher is floored and none is rescaled. Where every client's
  Fisher is below the floor the merge is the weighted mean.
  """
  if not floor > 0:
    raise ValueError(f'floor (the smallest Fisher value, which keeps the '
                     f'denominator positive) must be > 0, got {floor!r}')

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key
    fisher = context.fisher
    present = stack.present(weights)
    coefficients = jnp.where(present, weights, 0).astype(jnp.float32)

    def merge(u, f):
      rows = stack.rows(present, u)
      scaled = stack.rows(coefficients, u) * jnp.maximum(
          jnp.where(rows, f, floor).astype(jnp.float32), floor)
      numerator = jnp.sum(scaled * jnp.where(rows, u, 0), axis=0)
      denominator = jnp.sum(scaled, axis=0)
      merged = numerator / jnp.where(denominator > 0, denominator, 1)
      return merged.astype(u.dtype)

    return jax.tree.map(merge, updates, fisher), state

  return Aggregator(init=lambda params: (), update=update,
                    reads=Reads(outputs=frozenset({ClientOutput.FISHER})))


def variance_corrected() -> Aggregator:
  """Variance-corrected model averaging (Tian, Al-Ars, Kitsak, Hofstee,
  "Vanishing Variance Problem in Fully Decentralized Neural-Network
  Systems", arXiv:2404.04616, 2024; code twoentartian/DFL_torch,
  py_src/model_variance_correct.py and py_src/model_average.py).

  Per weight tensor, over the present clients' full models W_j (each
  counts once, as in the official averager): the mean W = mean_j W_j is
  rescaled about its own scalar mean to the target variance
  s^2 = mean_j Var(W_j), W' = (W - mean W) sqrt((s^2 + 1e-4) /
  (Var W + 1e-4)) + mean W, every variance over the tensor's elements with
  Bessel's correction (torch.var). As in the official code every tensor
  with more than one element is rescaled, 1-D ones (biases) included; a
  one-element tensor keeps the plain mean, and so do normalisation
  statistics (leaves whose path names batch_stats, running_mean,
  running_var or num_batches_tracked; the official gossip code keeps the
  node's own statistics, which a server does not have). Identical clients
  give the plain mean; with nobody present the aggregate is zero.
  """

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del key, context
    if params is None:
      raise ValueError('variance_corrected works on full client models and '
                       'needs params, the global model')
    present = stack.present(weights)
    count = jnp.sum(present)
    selected = present / jnp.maximum(count, 1)

    def correct(path, u, w):
      models = w[None].astype(jnp.float32) + jnp.where(
          stack.rows(present, u), u, 0).astype(jnp.float32)
      # Variances of models / s (s a power of two >= 1 bounding them)
      # cannot overflow; with epsilon / s^2 the result is the same (s = 1
      # for models within [-1, 1]).
      s = jnp.maximum(stack.scale(models, present), 1)
      models = models / s
      mean_model = jnp.tensordot(selected, models, axes=1,
                                 precision=stack.HIGHEST)
      if w.size > 1 and not _is_normalisation_statistic(path):
        variances = jnp.var(models.reshape(len(u), -1), axis=1, ddof=1)
        target = jnp.sum(selected * variances)
        center = jnp.mean(mean_model)
        # epsilon / s^2 underflows to 0 for s > 2^66: a constant tensor
        # then keeps its scale (its centred values are 0 anyway).
        epsilon = VARIANCE_EPSILON * (1 / s) ** 2
        spread = jnp.var(mean_model, ddof=1) + epsilon
        scale = jnp.sqrt(jnp.where(spread > 0, (target + epsilon) / spread,
                                   1))
        mean_model = (mean_model - center) * scale + center
      aggregate = mean_model * s - w.astype(jnp.float32)
      return jnp.where(count > 0, aggregate, 0).astype(u.dtype)

    return jax.tree_util.tree_map_with_path(correct, updates, params), state

  return Aggregator(init=lambda params: (), update=update)


def fedld(keep: float = 0.8) -> Aggregator:
  """FedLD's principal-direction aggregation (Zeng, Guo, Wang, Wang, Zhou,
  Qu, "Tackling Data Heterogeneity in Federated Learning via Loss
  Decomposition", MICCAI 2024; code Zeng-Shuang/FedLD, svd_tools.py,
  ``pcgrad_svd``), as in ALGORITHMS.md section 1.

  Round 0 (the ``round`` keyword) takes the plain mean of the present
  deltas. Later rounds, per tensor, with G the n x d matrix of the n
  present clients' deltas: eigenpairs (s_j, e_j) of G G^T / n in
  decreasing order, principal directions v_j = G^T e_j, the top
  k = int(keep * n) of them, and revised deltas
  g~_i = sum_{j<k} (s_j / sum s) ||g_i|| sign(<g_i, v_j>) v_j / ||v_j||;
  the aggregate is mean_i g~_i. Everything comes from the C x C Gram
  matrix, absent rows zeroed (their eigenvalues are 0, so they add no
  direction and no weight), and the aggregate is one combination of the
  deltas. Every present client counts once, whatever its n_i.

  Choices where the sources say nothing or differ:
  - flipping v_j so most clients have <g_i, v_j> >= 0 changes nothing,
    since sign(<g, -v>) (-v) = sign(<g, v>) v; it is not computed;
  - k is at least 1, so a lone client's update passes unchanged (both
    sources give k = int(0.8) = 0 there and the model would not move);
  - a direction orthogonal to g_i (sign 0) or with a zero eigenvalue
    adds nothing (the official code divides 0 by 0 there); in floating
    point an exact orthogonality usually comes out as a rounding-sized
    projection of either sign, which counts in full, as it does in the
    official code;
  - within a repeated eigenvalue the directions are whichever the
    eigensolver returns (the sign pattern, so the result, depends on them),
    as in the official code;
  - the official code averages over all N clients (it assumes full
    participation) and takes the plain mean also while its running mean of
    past aggregates is exactly zero; here the mean runs over the present
    clients and only round 0 is plain. Its special case for one-element
    tensors (plain mean) is what the formula gives anyway.
  """
  if not 0 < keep <= 1:
    raise ValueError(f'keep (the fraction of principal directions kept) '
                     f'must be in (0, 1], got {keep!r}')

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key
    round = context.round
    present = stack.present(weights)
    count = jnp.sum(present)
    updates = stack.zero_absent(updates, present)
    mean = stack.mean_of(updates, present)
    # int(keep * n) as Python computes it, for every n the buffer allows.
    kept = jnp.asarray([max(int(keep * n), 1)
                        for n in range(len(weights) + 1)])[count]

    def principal(u):
      # The coefficients do not change when the deltas are divided by a
      # power of two s >= 1 bounding them, whose Gram cannot overflow.
      s = jnp.maximum(stack.scale(u, present), 1)
      with jax.default_matmul_precision('highest'):
        coefficients = _principal_coefficients(
            stack.gram(stack.divided(u, s)), present, count, kept)
      return stack.combine(u, coefficients)

    revised = jax.tree.map(principal, updates)
    aggregate = jax.tree.map(lambda m, r: jnp.where(round == 0, m, r),
                             mean, revised)
    return aggregate, state

  return Aggregator(init=lambda params: (), update=update)


def _principal_coefficients(gram, present, count, kept):
  """c [C] with mean_i g~_i = sum_i c_i g_i, from the Gram matrix G G^T.

  <g_i, v_j> = (G G^T e_j)_i and ||v_j||^2 = e_j^T G G^T e_j = n s_j.
  Eigenvalues below the rank tolerance C * eps * s_max are rounding noise
  of a zero eigenvalue and their directions are dropped.
  """
  n = jnp.maximum(count, 1).astype(gram.dtype)
  eigenvalues, vectors = jnp.linalg.eigh(gram / n)
  order = jnp.argsort(-eigenvalues)
  eigenvalues = jnp.maximum(eigenvalues[order], 0)
  vectors = vectors[:, order]
  tolerance = len(present) * jnp.finfo(gram.dtype).eps * eigenvalues[0]
  used = (jnp.arange(len(present)) < kept) & (eigenvalues > tolerance)
  total = jnp.sum(eigenvalues)
  share = jnp.where(used, eigenvalues / jnp.where(total > 0, total, 1), 0)
  signs = jnp.where(present[:, None], jnp.sign(gram @ vectors), 0)
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0))
  # (1/n) sum_i ||g_i|| sign(<g_i, v_j>) (s_j / sum s), times
  # v_j / ||v_j|| = G^T e_j / sqrt(n s_j).
  weight = share * (norms @ signs) / n
  unit = jnp.where(used, jax.lax.rsqrt(jnp.where(used, n * eigenvalues, 1)),
                   0)
  return vectors @ (weight * unit)


def _is_normalisation_statistic(path) -> bool:
  return any(str(getattr(entry, name, '')) in NORMALISATION_STATISTICS
             for entry in path for name in ('key', 'name'))
