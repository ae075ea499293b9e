"""FedCE: aggregation weights from estimated client contributions.

Jiang, Roth, Li, Yang, Zhao, Nath, Xu, Dou, Xu, "Fair Federated Medical Image
Segmentation via Client Contribution Estimation", CVPR 2023; official code
github.com/NVIDIA/NVFlare research/fed-ce (jobs/fedce_prostate/app/custom:
aggregators/fedce_assembler.py, learners/
supervised_monai_prostate_fedce_learner.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, RoundContext
from fedround.data.federated import ClientData

# Cosines near 1 carry float32 round-off of about 1e-7, so contribution
# terms summing below this (per client) are no signal: they count as equal.
NO_SIGNAL = 1e-6
EPS = 1e-8  # torch.cosine_similarity's floor on each norm


class FedCEState(NamedTuple):
  """Per client (leading axis N), all updated only when it is usable."""
  rounds: jax.Array       # int32: rounds the client was aggregated in
  gradient: jax.Array     # float32 a_i = 1 - running mean of its cosine
  data: jax.Array         # float32 m_i = 1 - running mean of its validation
                          # score without it (0 without validation)
  coefficient: jax.Array  # float32 c_i: its weight when last aggregated


def fedce(population: int, apply_fn: Callable | None = None,
          validation: ClientData | None = None,
          floor: float = 1e-3) -> Aggregator:
  """FedCE (Jiang et al., CVPR 2023), the official "plus" mode.

  With the cohort's current coefficients c (each usable client's c from its
  last round, 1/n for a newcomer, normalised to sum 1 over the n usable
  clients; uniform in the first round as in the official code), the
  consensus is u = sum_j c_j Delta_j and per client:
    cos_i = cos(Delta_i, u - c_i Delta_i), a_i = 1 - mean of cos_i over the
    rounds the client took part in;
    m_i = 1 - mean of the accuracy, on client i's validation split, of the
    model without it: params + (u - c_i Delta_i) / (1 - c_i) (the official
    (w - c_i w_i) / (1 - c_i); params when it is alone).
  Then a and m are each normalised to sum 1 and floored at ``floor``, the
  new c = normalise(a + m) floored at ``floor`` (a alone without
  ``validation``), and the aggregate is sum_i c_i Delta_i. Floors apply after
  normalising, as in the official code, so c may sum to slightly above 1.

  Differences from the official code: u uses the current coefficients (the
  official assembler keeps the uniform round-0 ones, a bug), the
  leave-one-out model is scored in the same round on the server (the
  official client scores last round's aggregate at the start of the next,
  recording 0 in its first round), and running means are over the rounds a
  client took part in (all rounds in the official cross-silo setting).
  Example counts are ignored. A term with no signal (all cosines 1, all
  scores 1) counts as uniform; a lone client gets c = 1 (cosine 0).
  """
  if not (isinstance(population, int) and population >= 1):
    raise ValueError(f'population (clients in the federation) must be an '
                     f'integer >= 1, got {population!r}')
  if not 0 <= floor < 1:
    raise ValueError(f'floor (the smallest normalised contribution) must be '
                     f'in [0, 1), got {floor!r}')
  if validation is not None and apply_fn is None:
    raise ValueError('fedce scores leave-one-out models on the validation '
                     'splits: it needs the model (apply_fn) too')
  if validation is not None:
    validation = jax.tree.map(jnp.asarray, validation)
    if validation.num_clients != population:
      raise ValueError(f'validation must hold one split per client '
                       f'({population}), got {validation.num_clients}')

  def init(params):
    del params
    zeros = jnp.zeros(population, jnp.float32)
    return FedCEState(rounds=jnp.zeros(population, jnp.int32),
                      gradient=zeros, data=zeros, coefficient=zeros)

  def scores(params, updates, mixing, ids):
    """Accuracy of params + sum_j mixing[i, j] Delta_j on i's split."""
    def score(row, x, y, valid):
      model = jax.tree.map(jnp.add, params, stack.combine(updates, row))
      correct = jnp.argmax(apply_fn(model, x), axis=-1) == y
      return jnp.sum(correct & valid) / jnp.maximum(jnp.sum(valid), 1)
    return jax.vmap(score)(mixing, *validation.gather(ids))

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del key
    client_ids = context.client_ids
    usable = stack.present(weights) & (client_ids >= 0)
    count = jnp.sum(usable)
    ids = jnp.where(usable, client_ids, 0)
    updates = stack.zero_absent(updates, usable)

    rounds = state.rounds[ids] + 1
    newcomer = 1 / jnp.maximum(count, 1)
    current = _normalise(
        jnp.where(rounds > 1, state.coefficient[ids], newcomer), usable)
    # others[i, j] = c_j for j != i: row i's consensus u - c_i Delta_i.
    others = jnp.where(jnp.eye(len(current), dtype=bool), 0, current[None])
    cosines = _cosines(stack.gram(updates), others)
    gradient = _running_mean(state.gradient[ids], 1 - cosines, rounds)
    terms = _floored(_normalise(gradient, usable), usable, floor)
    data = state.data[ids]
    if validation is not None:
      if params is None:
        raise ValueError('fedce scores params + leave-one-out consensus: '
                         'update() needs params')
      rest = jnp.sum(others, axis=1, keepdims=True)
      mixing = others * jnp.where(rest > 0, 1 / jnp.where(rest > 0, rest, 1),
                                  0)
      data = _running_mean(data, 1 - scores(params, updates, mixing, ids),
                           rounds)
      terms = terms + _floored(_normalise(data, usable), usable, floor)
    coefficient = _floored(_normalise(terms, usable), usable, floor)

    slots = jnp.where(usable, client_ids, population)  # population: dropped
    scatter = lambda old, new: old.at[slots].set(new, mode='drop')
    new_state = FedCEState(
        rounds=scatter(state.rounds, rounds),
        gradient=scatter(state.gradient, gradient),
        data=scatter(state.data, data),
        coefficient=scatter(state.coefficient, coefficient))
    return stack.combine(updates, coefficient), new_state

  return Aggregator(init, update)


def _cosines(gram, others):
  """cos(Delta_i, sum_j others[i, j] Delta_j) from the Gram matrix, 0 where
  either vector is zero (torch.cosine_similarity)."""
  hi = jax.lax.Precision.HIGHEST
  inner = jnp.sum(others * gram, axis=1)
  sq_norm = jnp.sum(jnp.dot(others, gram, precision=hi) * others, axis=1)
  norms = (jnp.maximum(jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0)), EPS)
           * jnp.maximum(jnp.sqrt(jnp.maximum(sq_norm, 0)), EPS))
  return jnp.clip(inner / norms, -1, 1)


def _running_mean(mean, value, count):
  """The mean over ``count`` values from the mean of the first count - 1."""
  return mean + (value - mean) / count


def _normalise(values, usable):
  """values / their sum over the usable clients; uniform over them when the
  sum is round-off (no signal); 0 for the others."""
  values = jnp.where(usable, values, 0)
  count = jnp.sum(usable)
  total = jnp.sum(values)
  signal = total > NO_SIGNAL * count
  share = jnp.where(signal, values / jnp.where(signal, total, 1),
                    1 / jnp.maximum(count, 1))
  return jnp.where(usable, share, 0)


def _floored(shares, usable, floor):
  return jnp.where(usable, jnp.maximum(shares, floor), 0)
