"""Attacks on rankings (FRL's messages)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.attacks.base import Attack
from fedround.messages import Payload, positions



def reverse_ranking(collude: bool = False) -> Attack:
  """FRL's reversed-ranking attack (Mozaffari et al., USENIX Security
  2023) on 'ranks' messages: each Byzantine client sends its honest
  ranking reversed, position p -> n_l - 1 - p. With ``collude`` they all
  send the reverse of the Borda vote of their honest rankings, as FRL's
  code does (FL_train.py: their summed positions sorted descending)."""
  if not isinstance(collude, bool):
    raise ValueError(f'collude must be True or False, got {collude!r}')

  def reverse(position, byzantine):
    if collude:
      totals = jnp.sum(jnp.where(stack.rows(byzantine, position), position,
                                 0), axis=0)
      ranking = positions(totals)[None]
    else:
      ranking = position
    reversed_ranking = position[0].size - 1 - ranking
    return jnp.where(stack.rows(byzantine, position), reversed_ranking,
                     position)

  def apply(updates, *, byzantine, honest, key, aggregate=None):
    del honest, key, aggregate
    return jax.tree.map(lambda u: reverse(u, byzantine), updates)

  return Attack(apply, forges=frozenset({Payload.RANK}))
