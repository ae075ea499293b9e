"""FedAU and the baselines of its paper (ALGORITHMS.md section 1).

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation
Statistics in Federated Averaging", ICLR 2024; official code
github.com/IBM/fedau (``main.py``: the weighting methods 'adaptive',
'average_participating', 'average_all' and 'known_prob').

The paper minimises the uniform mean of the clients' objectives, so every
rule here ignores the example counts n_i: a client is present when its
weight is > 0 and its update then counts once, scaled by the rule's omega_i.
Absent slots and excluded non-finite updates add nothing, whatever their
rows hold. With nobody present every rule returns zeros.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, RoundContext, stateless


class FedAUState(NamedTuple):
  """Per-client interval statistics over all N clients, and what is logged.

  since_last: int32[N], S_i, rounds of the interval in progress.
  interval_sum, interval_count: int32[N], over the completed intervals.
  mean_weight: float32, the mean omega_i over all N clients after the round.
  participant_weight: float32, the mean omega_i this round's participants
    were given (0 when nobody took part).
  """
  since_last: jax.Array
  interval_sum: jax.Array
  interval_count: jax.Array
  mean_weight: jax.Array
  participant_weight: jax.Array


def fedau_weights(state: FedAUState) -> jax.Array:
  """float32[N]: omega_i, the mean completed participation interval of
  client i (an estimate of 1/p_i), 1 before its first one completes."""
  return _mean_interval(state.interval_sum, state.interval_count)


def fedau(cutoff: int | None = None, *, population: int) -> Aggregator:
  """FedAU: w <- w + (1/N) sum_{i in S} omega_i Delta_i, N = ``population``.

  omega_i is the mean of client i's completed participation intervals, 1
  before the first completes. After the round, a client that took part
  (a present slot's ``client_ids``, including a client whose update was
  excluded as non-finite: it did take part) records the interval S_i + 1
  and restarts S_i = 0; any other client adds 1 to S_i and, on reaching
  the cutoff K, records K and restarts (None: no cutoff; the official
  README also runs K = 50). A client left out of a full cohort buffer did
  not take part. So omega_i uses the participation of earlier rounds only.
  K = 1 records 1 every round: omega_i = 1, the rule ``average_all``.

  This is ALGORITHMS.md's definition, which matches the official code
  (main.py, weighting 'adaptive', cutoff -k-adaptive, default 100000):
  the weight a client gets is computed before its interval is recorded,
  the aggregate is divided by N, and the global step size is the server
  optimizer's (1 here; the paper's eta_g). The state holds S_i and the
  interval sums and counts over all N clients (see ``FedAUState``); the
  client slots must be the cohort itself, so no pre-aggregator that
  changes the client count may come before it.
  """
  if cutoff is not None and (not isinstance(cutoff, int)
                             or isinstance(cutoff, bool) or cutoff < 1):
    raise ValueError(f'cutoff (K, the longest participation interval '
                     f'recorded) must be an integer >= 1 or None for no '
                     f'cutoff, got {cutoff!r}')
  _check_population(population)

  def init(params):
    del params
    # Distinct buffers: the round donates its state.
    zeros = lambda: jnp.zeros(population, jnp.int32)
    return FedAUState(zeros(), zeros(), zeros(), jnp.float32(1),
                      jnp.float32(0))

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key
    client_ids = context.client_ids
    _check_slots(updates, client_ids, 'fedau')
    took_part = client_ids >= 0
    omega = fedau_weights(state)[jnp.clip(client_ids, 0, population - 1)]
    usable = stack.present(weights)
    aggregate = stack.combine(stack.zero_absent(updates, usable),
                              jnp.where(usable, omega / population, 0.0))
    participated = jnp.zeros(population, bool).at[
        jnp.where(took_part, client_ids, population)].set(True, mode='drop')
    interval = state.since_last + 1
    done = participated
    if cutoff is not None:
      done = done | (interval >= cutoff)
    interval_sum = state.interval_sum + jnp.where(done, interval, 0)
    interval_count = state.interval_count + done
    return aggregate, FedAUState(
        since_last=jnp.where(done, 0, interval),
        interval_sum=interval_sum, interval_count=interval_count,
        mean_weight=jnp.mean(_mean_interval(interval_sum, interval_count)),
        participant_weight=jnp.sum(jnp.where(took_part, omega, 0.0))
        / jnp.maximum(jnp.sum(took_part), 1))

  return Aggregator(init, update)


def average_participating() -> Aggregator:
  """The paper's baseline 'average participating' (main.py, weighting
  'average_participating'): (1/|S|) sum_{i in S} Delta_i over the clients
  whose update is usable: uniform FedAvg (``weighted.mean``), here also
  blind to whatever the rows of unusable slots hold."""

  def aggregate(updates, weights):
    usable = stack.present(weights)
    return stack.mean_of(stack.zero_absent(updates, usable), usable)

  return stateless(aggregate)


def average_all(population: int) -> Aggregator:
  """The paper's baseline 'average all' (main.py, weighting 'average_all'):
  (1/N) sum_{i in S} Delta_i, N = ``population``; an unbiased step when
  every client takes part with the same probability, a step shrunk by about
  the participation rate (the paper's runs raise eta_g to make up)."""
  _check_population(population)

  def aggregate(updates, weights):
    usable = stack.present(weights)
    return stack.combine(stack.zero_absent(updates, usable),
                         usable / population)

  return stateless(aggregate)


def inverse_probability(participation) -> Aggregator:
  """The paper's baseline with known participation statistics (main.py,
  weighting 'known_prob'): omega_i = 1/p_i, (1/N) sum_{i in S} Delta_i / p_i
  with p_i = ``participation.probabilities`` (N of them). Under uniform
  participation (p_i = C/N) it is the cohort's usable updates summed over C,
  the mean of the cohort when every update is usable."""
  probabilities = getattr(participation, 'probabilities', None)
  if probabilities is None:
    raise ValueError('inverse_probability needs each client\'s '
                     'participation probability, which the participation '
                     'model (config.participation) does not define')
  p = np.asarray(probabilities, np.float64)
  if p.ndim != 1 or p.size == 0 or not np.all((p > 0) & (p <= 1)):
    raise ValueError('inverse_probability needs participation probabilities '
                     'in (0, 1], one per client')
  population = len(p)
  scale = jnp.asarray(1 / (population * p), jnp.float32)

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key
    client_ids = context.client_ids
    _check_slots(updates, client_ids, 'inverse_probability')
    usable = stack.present(weights)
    coefficients = jnp.where(
        usable, scale[jnp.clip(client_ids, 0, population - 1)], 0.0)
    return stack.combine(stack.zero_absent(updates, usable), coefficients), state

  return Aggregator(lambda params: (), update)


def _mean_interval(interval_sum, interval_count):
  return jnp.where(interval_count > 0,
                   interval_sum / jnp.maximum(interval_count, 1),
                   1.0).astype(jnp.float32)


def _check_population(population):
  if (not isinstance(population, (int, np.integer))
      or isinstance(population, bool) or population < 1):
    raise ValueError(f'population (N, the clients in the federation) must '
                     f'be an integer >= 1, got {population!r}')


def _check_slots(updates, client_ids, rule):
  slots = jax.tree.leaves(updates)[0].shape[0]
  if client_ids.shape != (slots,):
    raise ValueError(f'{rule} weighs each client by its id: client_ids '
                     f'{client_ids.shape} must name the {slots} update '
                     f'slots (no pre-aggregator that changes the client '
                     f'count may come before it)')
