"""Weighted averaging rules (ALGORITHMS.md section 1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.aggregators.base import Aggregator, stateless


def _weighted_average(updates, weights):
  total = jnp.sum(weights)
  scale = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
  return jax.tree.map(
      lambda u: jnp.tensordot(weights * scale, u, axes=1).astype(u.dtype),
      updates)


def weighted_mean() -> Aggregator:
  """FedAvg (McMahan et al., AISTATS 2017): sum_i n_i Delta_i / sum_i n_i.

  With every weight zero (no usable client) the aggregate is zero: the global
  model stays where it is.
  """
  return stateless(_weighted_average)


def mean() -> Aggregator:
  """Uniform FedAvg: the plain mean over present clients (n_i = 1)."""
  return stateless(
      lambda updates, weights: _weighted_average(
          updates, (weights > 0).astype(jnp.float32)))
