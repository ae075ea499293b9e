"""Attacks that forge from the honest messages they see (ALGORITHMS.md
section 3): IPM, sign flipping, ALIE, their optimal versions, mimic."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedround.aggregators import stack
from fedround.attacks.base import (ANY_PAYLOAD, Attack, from_vector,
                                   honest_mean, honest_std, replace_rows)
from fedround.messages import REAL_VALUED


def ipm(tau: float = 2.0) -> Attack:
  """Inner product manipulation (Xie, Koyejo, Gupta, UAI 2019):
  -tau * mean(honest)."""
  return from_vector(lambda u, honest, key: jax.tree.map(
      lambda m: -tau * m, honest_mean(u, honest)))


def sign_flip() -> Attack:
  """Sign flipping (Allen-Zhu et al., ICLR 2021; ByzFL): -mean(honest);
  on 'signs' messages that is sent as the negated majority sign."""
  return ipm(tau=1.0)._replace(forges=REAL_VALUED)


def _alie_vector(updates, honest, tau):
  mean = honest_mean(updates, honest)
  std = honest_std(updates, honest, mean)
  return jax.tree.map(lambda m, s: m + tau * s, mean, std)


def alie(tau: float = 1.5) -> Attack:
  """A little is enough (Baruch, Baruch, Goldberg, NeurIPS 2019):
  mean + tau * std per coordinate (ddof = 1) of the honest updates."""
  return from_vector(lambda u, honest, key: _alie_vector(u, honest, tau))


def _optimal(vector_at: Callable, taus: tuple[float, ...]) -> Attack:
  """Picks, per round, the tau on a grid that moves the configured
  aggregate farthest from the honest mean, then refines between the best
  tau's neighbours (ByzFL's line search, on a static grid so it jits)."""
  coarse = jnp.asarray(taus, jnp.float32)

  def apply(updates, *, byzantine, honest, key, aggregate):
    del key
    target = honest_mean(updates, honest)

    def damage(tau):
      attacked = replace_rows(updates, byzantine,
                              vector_at(updates, honest, tau))
      moved = jax.tree.map(jnp.subtract, aggregate(attacked), target)
      return stack.sq_norms(jax.tree.map(lambda x: x[None], moved))[0]

    best = jnp.argmax(jax.lax.map(damage, coarse))
    low = coarse[jnp.maximum(best - 1, 0)]
    high = coarse[jnp.minimum(best + 1, len(taus) - 1)]
    fine = jnp.linspace(low, high, 9)
    tau = fine[jnp.argmax(jax.lax.map(damage, fine))]
    return replace_rows(updates, byzantine, vector_at(updates, honest, tau))

  return Attack(apply)


_TAU_GRID = tuple(float(t) for t in np.geomspace(0.05, 50.0, 16))


def optimal_ipm(taus: tuple[float, ...] = _TAU_GRID) -> Attack:
  """IPM with the tau that maximises ||aggregate - mean(honest)|| against
  the configured aggregator (ByzFL's Optimal IPM)."""
  return _optimal(lambda u, honest, tau: jax.tree.map(
      lambda m: -tau * m, honest_mean(u, honest)), tuple(taus))


def optimal_alie(taus: tuple[float, ...] = _TAU_GRID) -> Attack:
  """ALIE with the tau that maximises ||aggregate - mean(honest)|| against
  the configured aggregator (ByzFL's Optimal ALIE)."""
  return _optimal(_alie_vector, tuple(taus))


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
  return from_vector(copy)._replace(forges=ANY_PAYLOAD)
