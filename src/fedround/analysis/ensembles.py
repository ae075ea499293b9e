"""Prediction-time voting of an ensemble of client models.

Both rules take logits shaped [models, examples, classes] and return the
predicted class of every example, int32 [examples]. Each model votes its
argmax class (ties within a model to the smaller class index); ties between
classes go to the smaller class index. Pure jnp and jittable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _votes(logits: jax.Array) -> jax.Array:
  """[examples, classes]: how many models vote each class."""
  if logits.ndim != 3 or logits.shape[0] < 1:
    raise ValueError('logits must be shaped [models, examples, classes] with '
                     f'at least one model, got shape {logits.shape}')
  ballots = jnp.argmax(logits, -1)  # [models, examples]
  return jnp.sum(jax.nn.one_hot(ballots, logits.shape[-1], dtype=jnp.int32),
                 0)


def majority_vote(logits: jax.Array) -> jax.Array:
  """The class with the most argmax votes (plurality vote)."""
  return jnp.argmax(_votes(logits), -1).astype(jnp.int32)


def runoff_election(logits: jax.Array) -> jax.Array:
  """Run-off election (Rezaei et al., ICML 2023).

  Round 1: the two classes m1, m2 with the most argmax votes (ties to the
  smaller index). Round 2: e = #{models whose logit for m1 > logit for
  m2} - #{the others}; e > 0 picks m1, e < 0 picks m2, e = 0 the smaller
  index. The comparison is strict: a model with equal logits for m1 and m2
  counts against m1.
  """
  if logits.ndim == 3 and logits.shape[-1] < 2:
    raise ValueError('a run-off needs at least 2 classes, got logits of '
                     f'shape {logits.shape}')
  top_two = jax.lax.top_k(_votes(logits), 2)[1]  # [examples, 2], stable
  logit_of = jnp.take_along_axis(
      logits, jnp.broadcast_to(top_two, logits.shape[:2] + (2,)), -1)
  margin = jnp.sum(jnp.where(logit_of[..., 0] > logit_of[..., 1], 1, -1), 0)
  first, second = top_two[:, 0], top_two[:, 1]
  return jnp.where(margin > 0, first, jnp.where(
      margin < 0, second, jnp.minimum(first, second))).astype(jnp.int32)
