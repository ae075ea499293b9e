"""The Attack contract and what the attacks share.

An attack has two hooks, one on each place an adversary can act:

- ``poison(data, byzantine, num_classes) -> data``: the training data
  before local training (``data`` a data.ClientData, ``byzantine``
  bool[N]); label flipping poisons here, then Byzantine clients train
  honestly on what it left them. Most attacks leave the data alone.
- ``forge(messages, *, byzantine, honest, key, aggregate) -> messages``:
  the stack the cohort sends, with the Byzantine rows replaced. It sees the
  round's honest messages (an omniscient adversary): ``honest`` marks the
  present, non-Byzantine clients with finite updates. ``aggregate(stack)
  -> aggregate`` runs the configured chain (pre-aggregators and rule) as
  the server will, so optimal attacks can search against it.

``forges`` is the set of message payloads (fedround.messages.Payload) an
attack can forge. Which clients are Byzantine: ``config.attack.fraction``
of the N clients (floor), drawn from the run's seed, or the explicit
``config.attack.ids`` (``byzantine_mask``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedround.aggregators import stack
from fedround.messages import Payload

ANY_PAYLOAD = frozenset(Payload)


def _clean(data, byzantine, num_classes):
  del byzantine, num_classes
  return data


def unforged(updates, **_):
  return updates


class Attack(NamedTuple):
  forge: Callable  # (updates, *, byzantine, honest, key, aggregate) -> updates
  poison: Callable = _clean  # (data, byzantine, num_classes) -> data
  forges: frozenset[Payload] = frozenset({Payload.REAL})


def replace_rows(updates, byzantine, attack_vector):
  """Byzantine rows become ``attack_vector`` (one update, or [C, ...])."""
  return jax.tree.map(
      lambda u, a: jnp.where(stack.rows(byzantine, u),
                             jnp.broadcast_to(a, u.shape).astype(u.dtype), u),
      updates, attack_vector)


def honest_mean(updates, honest):
  return stack.mean_of(stack.zero_absent(updates, honest), honest)


def honest_std(updates, honest, mean):
  """Per-coordinate sample standard deviation (ddof = 1) of honest rows."""
  count = jnp.maximum(jnp.sum(honest) - 1, 1)
  return jax.tree.map(
      lambda u, m: jnp.sqrt(jnp.sum(
          jnp.where(stack.rows(honest, u), (u - m[None]) ** 2, 0), axis=0)
                            / count), updates, mean)


def from_vector(vector_fn):
  """An Attack whose Byzantine clients all send ``vector_fn(updates,
  honest, key)``."""
  def apply(updates, *, byzantine, honest, key, aggregate=None):
    del aggregate
    return replace_rows(updates, byzantine, vector_fn(updates, honest, key))
  return Attack(apply)


def no_attack() -> Attack:
  return Attack(unforged, forges=ANY_PAYLOAD)


def byzantine_count(fraction: float, num_clients: int) -> int:
  return int(np.floor(fraction * num_clients + 1e-9))


def byzantine_mask(key: jax.Array, num_clients: int, fraction: float,
                   ids: tuple[int, ...] = ()) -> jax.Array:
  """bool[N]: the explicit ``ids``, or floor(fraction * N) clients drawn
  with ``key`` (the run's seed, so each seed has its own adversaries)."""
  if ids:
    return jnp.zeros(num_clients, bool).at[jnp.asarray(ids)].set(True)
  count = byzantine_count(fraction, num_clients)
  order = jax.random.permutation(key, num_clients)
  return jnp.zeros(num_clients, bool).at[order[:count]].set(True)
