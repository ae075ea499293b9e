"""Model soups (Wortsman et al., "Model soups: averaging weights of multiple
fine-tuned models improves accuracy without increasing inference time",
ICML 2022; code mlfoundations/model-soups, main.py): averages of models
that share an architecture, given as one pytree whose leaves carry a
leading model axis [M, ...]."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def uniform_soup(models):
  """The uniform soup: the mean of the M models."""
  return jax.tree.map(lambda m: jnp.mean(m, axis=0).astype(m.dtype), models)


def greedy_soup(models, score_fn: Callable[[Any], jax.Array]):
  """The greedy soup: ``(soup, ingredients bool[M], score)``.

  ``score_fn(params) -> scalar`` is held-out accuracy (higher is better).
  As in the official code, the models are sorted by their own score
  (descending; ties keep the lower index first), the soup starts as the
  best one, and each next model joins the running mean only if the
  mean's score strictly improves; ``score`` is the final soup's. The soup
  is therefore never worse on the held-out data than its best ingredient.
  A NaN score never wins a comparison: such a model is tried last and
  never joins. Everything is a ``lax`` loop over the static M, so the
  function jits (with a jittable score_fn) and runs as well eagerly.
  """
  leaves = jax.tree.leaves(models)
  if not leaves or leaves[0].shape[0] < 1:
    raise ValueError('greedy_soup needs at least one model: the leaves of '
                     '`models` must have a leading model axis of size >= 1')
  count = leaves[0].shape[0]
  take = lambda i: jax.tree.map(lambda m: m[i], models)
  scores = jax.lax.map(score_fn, models)
  order = jnp.argsort(jnp.where(jnp.isnan(scores), jnp.inf, -scores),
                      stable=True)
  first = order[0]
  total = jax.tree.map(lambda m: m.astype(jnp.float32), take(first))

  def mean(total, size):
    return jax.tree.map(lambda t, m: (t / size).astype(m.dtype), total,
                        models)

  def step(position, carry):
    total, size, best, ingredients = carry
    index = order[position]
    candidate = jax.tree.map(lambda t, m: t + m.astype(jnp.float32), total,
                             take(index))
    score = score_fn(mean(candidate, size + 1))
    better = score > best
    return (jax.tree.map(lambda c, t: jnp.where(better, c, t), candidate,
                         total),
            size + better, jnp.where(better, score, best),
            ingredients.at[index].set(better))

  ingredients = jnp.zeros(count, bool).at[first].set(True)
  total, size, best, ingredients = jax.lax.fori_loop(
      1, count, step, (total, jnp.ones((), jnp.int32), scores[first],
                       ingredients))
  return mean(total, size), ingredients, best
