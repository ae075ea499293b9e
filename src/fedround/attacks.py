"""Simulated Byzantine clients (ALGORITHMS.md section 3), inside the round.

An attack has two hooks, one on each place an adversary can act:

- ``poison(data, byzantine, num_classes) -> data``: the training data
  before local training (``data`` a client.ClientData, ``byzantine``
  bool[N]); label flipping poisons here, then Byzantine clients train
  honestly on what it left them. Most attacks leave the data alone.
- ``forge(messages, *, byzantine, honest, key, aggregate) -> messages``:
  the stack the cohort sends, with the Byzantine rows replaced. It sees the
  round's honest messages (an omniscient adversary): ``honest`` marks the
  present, non-Byzantine clients with finite updates. ``aggregate(stack)
  -> aggregate`` runs the configured chain (pre-aggregators and rule) as
  the server will, so optimal attacks can search against it.

Attacks forge messages (fedround.messages); ``Attack.forges`` is the set of
payloads each can forge. Real-valued attacks (IPM, ALIE, their optimal
versions, Gaussian, inf, NaN) need real numbers ('identity'); sign flipping
also forges signs (the round signs what it sends: the negated majority);
mimic, label flipping and no attack work on any payload; reversed rankings
on rankings ('ranks').

Which clients are Byzantine: ``config.attack.fraction`` of the N clients
(floor), drawn from the run's seed, or the explicit ``config.attack.ids``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedround.aggregators import stack
from fedround.messages import REAL_VALUED, Payload, positions
from fedround.registry import Registry

ANY_PAYLOAD = frozenset(Payload)


def _clean(data, byzantine, num_classes):
  del byzantine, num_classes
  return data


def _unforged(updates, **_):
  return updates


class Attack(NamedTuple):
  forge: Callable  # (updates, *, byzantine, honest, key, aggregate) -> updates
  poison: Callable = _clean  # (data, byzantine, num_classes) -> data
  forges: frozenset[Payload] = frozenset({Payload.REAL})


def _replace(updates, byzantine, attack_vector):
  """Byzantine rows become ``attack_vector`` (one update, or [C, ...])."""
  return jax.tree.map(
      lambda u, a: jnp.where(stack.rows(byzantine, u),
                             jnp.broadcast_to(a, u.shape).astype(u.dtype), u),
      updates, attack_vector)


def _honest_mean(updates, honest):
  return stack.mean_of(stack.zero_absent(updates, honest), honest)


def _honest_std(updates, honest, mean):
  """Per-coordinate sample standard deviation (ddof = 1) of honest rows."""
  count = jnp.maximum(jnp.sum(honest) - 1, 1)
  return jax.tree.map(
      lambda u, m: jnp.sqrt(jnp.sum(
          jnp.where(stack.rows(honest, u), (u - m[None]) ** 2, 0), axis=0)
                            / count), updates, mean)


def _from_vector(vector_fn):
  """An Attack whose Byzantine clients all send ``vector_fn(updates,
  honest, key)``."""
  def apply(updates, *, byzantine, honest, key, aggregate=None):
    del aggregate
    return _replace(updates, byzantine, vector_fn(updates, honest, key))
  return Attack(apply)


def no_attack() -> Attack:
  return Attack(_unforged, forges=ANY_PAYLOAD)


def ipm(tau: float = 2.0) -> Attack:
  """Inner product manipulation (Xie, Koyejo, Gupta, UAI 2019):
  -tau * mean(honest)."""
  return _from_vector(lambda u, honest, key: jax.tree.map(
      lambda m: -tau * m, _honest_mean(u, honest)))


def sign_flip() -> Attack:
  """Sign flipping (Allen-Zhu et al., ICLR 2021; ByzFL): -mean(honest);
  on 'signs' messages that is sent as the negated majority sign."""
  return ipm(tau=1.0)._replace(forges=REAL_VALUED)


def _alie_vector(updates, honest, tau):
  mean = _honest_mean(updates, honest)
  std = _honest_std(updates, honest, mean)
  return jax.tree.map(lambda m, s: m + tau * s, mean, std)


def alie(tau: float = 1.5) -> Attack:
  """A little is enough (Baruch, Baruch, Goldberg, NeurIPS 2019):
  mean + tau * std per coordinate (ddof = 1) of the honest updates."""
  return _from_vector(lambda u, honest, key: _alie_vector(u, honest, tau))


def _optimal(vector_at: Callable, taus: tuple[float, ...]) -> Attack:
  """Picks, per round, the tau on a grid that moves the configured
  aggregate farthest from the honest mean, then refines between the best
  tau's neighbours (ByzFL's line search, on a static grid so it jits)."""
  coarse = jnp.asarray(taus, jnp.float32)

  def apply(updates, *, byzantine, honest, key, aggregate):
    del key
    target = _honest_mean(updates, honest)

    def damage(tau):
      attacked = _replace(updates, byzantine, vector_at(updates, honest, tau))
      moved = jax.tree.map(jnp.subtract, aggregate(attacked), target)
      return stack.sq_norms(jax.tree.map(lambda x: x[None], moved))[0]

    best = jnp.argmax(jax.lax.map(damage, coarse))
    low = coarse[jnp.maximum(best - 1, 0)]
    high = coarse[jnp.minimum(best + 1, len(taus) - 1)]
    fine = jnp.linspace(low, high, 9)
    tau = fine[jnp.argmax(jax.lax.map(damage, fine))]
    return _replace(updates, byzantine, vector_at(updates, honest, tau))

  return Attack(apply)


_TAU_GRID = tuple(float(t) for t in np.geomspace(0.05, 50.0, 16))


def optimal_ipm(taus: tuple[float, ...] = _TAU_GRID) -> Attack:
  """IPM with the tau that maximises ||aggregate - mean(honest)|| against
  the configured aggregator (ByzFL's Optimal IPM)."""
  return _optimal(lambda u, honest, tau: jax.tree.map(
      lambda m: -tau * m, _honest_mean(u, honest)), tuple(taus))


def optimal_alie(taus: tuple[float, ...] = _TAU_GRID) -> Attack:
  """ALIE with the tau that maximises ||aggregate - mean(honest)|| against
  the configured aggregator (ByzFL's Optimal ALIE)."""
  return _optimal(_alie_vector, tuple(taus))


def gaussian(mu: float = 0.0, sigma: float = 200.0) -> Attack:
  """Each Byzantine client sends its own draw of N(mu, sigma^2) per
  coordinate (ByzFL's Gaussian)."""
  def apply(updates, *, byzantine, honest, key, aggregate=None):
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(key, len(leaves))
    noise = [mu + sigma * jax.random.normal(k, u.shape, jnp.float32)
             for k, u in zip(keys, leaves)]
    return _replace(updates, byzantine, jax.tree.unflatten(treedef, noise))
  return Attack(apply)


def inf() -> Attack:
  """Every coordinate +inf: the round excludes (and counts) such updates."""
  return _from_vector(lambda u, honest, key: jax.tree.map(
      lambda x: jnp.full(x.shape[1:], jnp.inf), u))


def nan() -> Attack:
  """Every coordinate NaN: the round excludes (and counts) such updates."""
  return _from_vector(lambda u, honest, key: jax.tree.map(
      lambda x: jnp.full(x.shape[1:], jnp.nan), u))


def mimic(target: int = 0) -> Attack:
  """Mimic (Karimireddy, He, Jaggi, ICLR 2022): copy the update of honest
  client number ``target`` of the cohort (in cohort order)."""
  if target < 0:
    raise ValueError(f'mimic target must be >= 0, got {target}')

  def copy(updates, honest, key):
    order = jnp.cumsum(honest) - 1
    # The target-th honest client, or the last honest one if fewer exist.
    pick = jnp.argmax(honest & (order == jnp.minimum(
        target, jnp.sum(honest) - 1)))
    return jax.tree.map(lambda u: u[pick], updates)
  return _from_vector(copy)._replace(forges=ANY_PAYLOAD)


def label_flip() -> Attack:
  """Data poisoning (Tolpegin et al., ESORICS 2020): Byzantine clients train
  on labels y -> (L - 1) - y and send that update unchanged."""
  def poison(data, byzantine, num_classes):
    return data._replace(y=jnp.where(byzantine[:, None],
                                     num_classes - 1 - data.y, data.y))

  return Attack(_unforged, poison, forges=ANY_PAYLOAD)


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


ATTACKS = Registry('attack')
ATTACKS.register('none')(no_attack)
ATTACKS.register('sign_flip')(sign_flip)
ATTACKS.register('ipm')(ipm)
ATTACKS.register('alie')(alie)
ATTACKS.register('optimal_ipm')(optimal_ipm)
ATTACKS.register('optimal_alie')(optimal_alie)
ATTACKS.register('gaussian')(gaussian)
ATTACKS.register('inf')(inf)
ATTACKS.register('nan')(nan)
ATTACKS.register('mimic')(mimic)
ATTACKS.register('label_flip')(label_flip)
ATTACKS.register('reverse_ranking')(reverse_ranking)


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
