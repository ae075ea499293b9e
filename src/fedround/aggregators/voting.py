"""Voting rules (ALGORITHMS.md section 4): each usable client casts one
vote whatever its example count; absent and excluded clients do not vote."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.aggregators.base import (Aggregate, Aggregator, Reads,
                                       RoundContext, stateless)
from fedround.messages import Payload

_INT32_LIMIT = 2 ** 31


def frl_vote() -> Aggregator:
  """FRL's Borda vote (Mozaffari, Shejwalkar and Houmansadr, "Every Vote
  Counts: Ranking-Based Training of Federated Learning to Resist Poisoning
  Attacks", USENIX Security 2023, on arXiv as "FRL: Federated Rank
  Learning"; ``FRL_Vote`` in SPIN-UMass/FRL utils.py).

  Reads 'ranks' messages (each edge's position in a client's ranking).
  Per layer: sum each edge's position over the voters, order the edges by
  that sum, and give them the layer's initial scores in ascending order:
  the edge of smallest summed position gets the smallest initial score,
  so the global scores stay a permutation of the initial ones. Equal sums
  are ordered by flat edge index (a stable sort): the lower index gets the
  smaller score. With no voter the scores stay as they are.

  State: each layer's initial scores, sorted (from ``init(params)``). The
  aggregate is the new scores themselves (``Aggregate.MODEL``), so no
  server optimizer rounds them.
  """

  def init(params):
    return jax.tree.map(lambda p: jnp.sort(p.reshape(-1)), params)

  def update(positions, state, params, *, weights, key=None,
             context=RoundContext()):
    del key, context
    voters = stack.present(weights)

    def vote(position, sorted_scores, scores):
      if len(voters) * (scores.size - 1) >= _INT32_LIMIT:
        raise ValueError(f'frl_vote sums {len(voters)} positions of up to '
                         f'{scores.size - 1} in int32, which overflows; '
                         'use fewer clients per round or smaller layers')
      totals = jnp.sum(jnp.where(stack.rows(voters, position), position, 0),
                       axis=0, dtype=jnp.int32)
      order = jnp.argsort(totals.reshape(-1), stable=True)
      voted = jnp.zeros_like(sorted_scores).at[order].set(sorted_scores)
      return jnp.where(jnp.any(voters), voted.reshape(scores.shape), scores)

    return jax.tree.map(vote, positions, state, params), state

  return Aggregator(init, update, Reads(frozenset({Payload.RANK})),
                    Aggregate.MODEL)


def sign_majority() -> Aggregator:
  """signSGD with majority vote (Bernstein et al., "signSGD with Majority
  Vote is Communication Efficient and Fault Tolerant", ICLR 2019):
  sign(sum_i sign(m_i)) per coordinate over the voters; the server learning
  rate scales it. Reads 'signs' messages, and signs 'identity' ones itself.
  A tied coordinate, or one with no voter, gets 0."""

  def aggregate(messages, weights):
    voters = stack.present(weights)
    return jax.tree.map(lambda m: jnp.sign(jnp.sum(
        jnp.where(stack.rows(voters, m), jnp.sign(m), 0), axis=0)).astype(
            m.dtype), messages)

  return stateless(aggregate)
