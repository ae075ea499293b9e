"""Packing a cohort's clients into vmap lanes, one client after another.

Under ``vmap`` every lane runs as many steps as the longest lane. With one
lane per client that is the cohort's largest schedule, so with log-normal
client sizes most lanes idle. Instead the cohort's clients go into L lanes
by longest-processing-time-first (each client, largest first, to the lane
with the least work so far; Graham, SIAM J. Appl. Math. 1969), and a lane
trains its clients one after another, starting each from the global model.
A client's steps stay in one lane, in order: the algorithm is unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_IDLE = 0.1  # the idle fraction ``choose_lanes`` allows
SIMULATED_COHORTS = 256


def pack(steps, lanes: int):
  """(table int32[lanes, C + 1], iterations): lane l trains clients
  ``table[l, 0], table[l, 1], ...`` until C, which ends every row;
  ``iterations`` is the busiest lane's steps. Clients with no steps get no
  lane."""
  num_clients = steps.shape[0]
  order = jnp.argsort(-steps, stable=True)

  def place(carry, client):
    load, count = carry
    lane = jnp.argmin(load)
    busy = steps[client] > 0
    slot = (jnp.where(busy, lane, lanes), count[lane])
    return (load.at[lane].add(steps[client]),
            count.at[lane].add(busy.astype(count.dtype))), slot

  zeros = jnp.zeros(lanes, steps.dtype) + 0 * steps[0]  # steps' sharding
  (load, _), (lane, rank) = jax.lax.scan(place, (zeros, zeros), order)
  table = jnp.full((lanes, num_clients + 1), num_clients, jnp.int32).at[
      lane, rank].set(order.astype(jnp.int32), mode='drop')
  return table, jnp.max(load)


def simulated_idle(steps: np.ndarray, clients: int, lanes: int,
                   cohorts: int = SIMULATED_COHORTS, seed: int = 0) -> float:
  """Mean idle fraction of ``pack`` with ``lanes`` lanes over cohorts of
  ``clients`` drawn uniformly without replacement from clients whose
  schedules are ``steps``."""
  rng = np.random.default_rng(seed)
  drawn = np.stack([rng.choice(len(steps), clients, replace=False)
                    for _ in range(cohorts)])
  work = -np.sort(-steps[drawn], axis=1)  # [cohorts, C], largest first
  load = np.zeros((cohorts, lanes), np.int64)
  rows = np.arange(cohorts)
  for j in range(clients):
    lane = np.argmin(load, axis=1)
    load[rows, lane] += work[:, j]
  budget = lanes * load.max(axis=1)
  return float(np.mean(1 - work.sum(1) / np.maximum(budget, 1)))


def choose_lanes(steps: np.ndarray, clients: int,
                 max_idle: float = MAX_IDLE) -> int:
  """The most lanes (fewest iterations) for a cohort of ``clients`` whose
  simulated idle fraction is at most ``max_idle`` (a binary search: idling
  grows with lanes); one lane per client when all schedules are equal."""
  steps = np.asarray(steps)
  if steps.min() == steps.max():
    return clients
  low, high = 1, clients  # low always meets max_idle: one lane never idles
  while low < high:
    middle = (low + high + 1) // 2
    if simulated_idle(steps, clients, middle) <= max_idle:
      low = middle
    else:
      high = middle - 1
  return low
