"""Participation models: which clients take part in a round.

A model samples a fixed-size cohort buffer of ids plus a mask of which buffer
slots hold a participant, so a varying number of participants is still one
jitted round.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedround.registry import ConfigError


class Participation(NamedTuple):
  """``sample(key) -> (ids int32[C], mask bool[C])``; C = cohort_size."""
  sample: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
  cohort_size: int


def uniform(num_clients: int, cohort_size: int) -> Participation:
  """C clients drawn uniformly without replacement (McMahan et al. 2017)."""
  if not 1 <= cohort_size <= num_clients:
    raise ConfigError(
        f'config.clients_per_round: cohort of {cohort_size} clients is '
        f'impossible in a federation of {num_clients}; valid: 1..{num_clients}')

  def sample(key):
    ids = jax.random.choice(key, num_clients, (cohort_size,), replace=False)
    return ids.astype(jnp.int32), jnp.ones(cohort_size, bool)

  return Participation(sample, cohort_size)
