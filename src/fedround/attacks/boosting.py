"""Boosting (model replacement's scaling): each Byzantine client sends its
own honest update times ``boost``, so that averaging with the honest ones
still moves the model its way (Bagdasaryan, Veit, Hua, Estrin, Shmatikov,
"How To Backdoor Federated Learning", AISTATS 2020, section 4: the update
scaled by gamma = n / eta). The README's worked example of adding an
attack (one module plus one registry line)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.attacks.base import Attack


def boosting(boost: float = 10.0) -> Attack:
  """Byzantine rows become ``boost`` times themselves (their honest
  training on their own data)."""
  if isinstance(boost, bool) or not isinstance(boost, (int, float)):
    raise ValueError(f'boost must be a number, got {boost!r}')

  def forge(updates, *, byzantine, honest, key, aggregate=None):
    del honest, key, aggregate
    return jax.tree.map(
        lambda u: jnp.where(stack.rows(byzantine, u), boost * u, u), updates)

  return Attack(forge)
