"""Participation models: which clients take part in a round.

A model has a state (``init(key)``: a Markov chain's on/off states, a
cyclic client's phase; ``()`` when it needs none) and, every round,
``sample(key, state, round) -> (ids int32[C], present bool[C], state)``: a
fixed buffer of C = ``cohort_size`` slots, the participants first, so a
varying number of participants is still one jitted round with static
shapes. Absent slots hold valid ids that take no part. ``probabilities``
(float[N]) is each client's marginal probability of taking part in a round.

``bernoulli``, ``markov`` and ``cyclic`` are the participation patterns of
Wang & Ji, "A Lightweight Method for Tackling Unknown Participation
Statistics in Federated Averaging", ICLR 2024 (FedAU; official code
github.com/IBM/fedau, ``util/util.py``: ``WorkerSampler`` and
``data_participation_each_node``). Every client has its own probability
p_i, unknown to the server and correlated with its label mix
(``participation_probabilities``), and decides on its own whether to take
part, so the participant count varies. The factories refuse a buffer
smaller than the mean plus 4 standard deviations of that count in its worst
round; should more clients take part than the buffer holds all the same, a
uniformly random C of them are kept and the others count as absent.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedround.registry import ConfigError

SAFETY_SDS = 4  # buffer >= mean + SAFETY_SDS standard deviations of the count
# The official code's data partition, simulated when no label counts are
# given (IBM/fedau config.py: CIFAR-10, -data-dirichlet-alpha 0.1).
SIMULATED_CLASSES = 10
SIMULATED_DATA_ALPHA = 0.1


class Participation(NamedTuple):
  init: Callable[[jax.Array], Any]
  sample: Callable[[jax.Array, Any, jax.Array],
                   tuple[jax.Array, jax.Array, Any]]
  cohort_size: int
  probabilities: np.ndarray | None = None


def uniform(num_clients: int, cohort_size: int) -> Participation:
  """C clients drawn uniformly without replacement (McMahan et al.,
  "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017); every slot is present, and every client's
  probability of taking part is C/N."""
  _check_cohort(num_clients, cohort_size)

  def sample(key, state, round):
    del round
    ids = jax.random.choice(key, num_clients, (cohort_size,), replace=False)
    return ids.astype(jnp.int32), jnp.ones(cohort_size, bool), state

  return Participation(lambda key: (), sample, cohort_size,
                       np.full(num_clients, cohort_size / num_clients))


def participation_probabilities(num_clients: int, *, mean: float = 0.1,
                                floor: float = 0.02, alpha: float = 0.1,
                                label_counts: np.ndarray | None = None,
                                seed: int = 0) -> np.ndarray:
  """float64[N]: p_i = min(1, max(floor, mean * L * <q_i, v>)), FedAU's
  construction (IBM/fedau util/util.py, ``data_participation_each_node``).

  q_i is client i's label distribution over L classes (its row of
  ``label_counts`` normalised; a client without examples gets p_i = floor)
  and v ~ Dirichlet(alpha 1_L) is one draw from ``seed`` shared by all
  clients. E[v] = 1_L / L, so p_i averages about ``mean`` (a little more
  for the floor); a small alpha concentrates v on few classes, so clients
  holding those classes take part often and the rest rarely. The cap at 1
  is ours: the official code would fail above 1, which mean = 0.1 reaches
  only with more than 10 classes.

  Without ``label_counts`` the label mixes are simulated from ``seed`` as
  the official partition makes them (util.py, ``partition``): 10 classes of
  equal size, each client draws d_i ~ Dirichlet(0.1 1_10) and receives the
  fraction d_ik / sum_j d_jk of class k.
  """
  if not 0 < mean <= 1:
    raise ValueError(f'mean (the average participation probability) must '
                     f'be in (0, 1], got {mean!r}')
  if not 0 < floor <= 1:
    raise ValueError(f'floor (the smallest participation probability) must '
                     f'be in (0, 1], got {floor!r}')
  if not alpha > 0:
    raise ValueError(f'alpha (the Dirichlet concentration of the class '
                     f'preferences) must be > 0, got {alpha!r}')
  rng = np.random.default_rng(seed)
  if label_counts is None:
    shares = rng.dirichlet(SIMULATED_DATA_ALPHA * np.ones(SIMULATED_CLASSES),
                           num_clients)
    label_counts = shares / shares.sum(axis=0)
  counts = np.asarray(label_counts, np.float64)
  if (counts.ndim != 2 or counts.shape[0] != num_clients
      or counts.shape[1] < 1 or np.any(counts < 0)):
    raise ValueError(f'label_counts must be a non-negative [num_clients, '
                     f'num_classes] array with num_clients={num_clients}, '
                     f'got shape {counts.shape}')
  totals = counts.sum(axis=1, keepdims=True)
  mixes = np.divide(counts, totals, out=np.zeros_like(counts),
                    where=totals > 0)
  preference = rng.dirichlet(alpha * np.ones(counts.shape[1]))
  scaled = mean * counts.shape[1] * (mixes @ preference)
  return np.minimum(1.0, np.maximum(floor, scaled))


def bernoulli(num_clients: int, cohort_size: int, *, mean: float = 0.1,
              floor: float = 0.02, alpha: float = 0.1,
              label_counts: np.ndarray | None = None,
              seed: int = 0) -> Participation:
  """Each client takes part independently with its own probability p_i
  every round (FedAU's Bernoulli participation; IBM/fedau util/util.py,
  ``WorkerSampler`` with method 'bernoulli'). p_i: see
  ``participation_probabilities``."""
  p = participation_probabilities(num_clients, mean=mean, floor=floor,
                                  alpha=alpha, label_counts=label_counts,
                                  seed=seed)
  _check_buffer('bernoulli', num_clients, cohort_size, p[:, None])
  probability = jnp.asarray(p, jnp.float32)

  def sample(key, state, round):
    del round
    k_active, k_buffer = jax.random.split(key)
    active = jax.random.uniform(k_active, (num_clients,)) < probability
    return (*_fill_buffer(k_buffer, active, cohort_size), state)

  return Participation(lambda key: (), sample, cohort_size, p)


def markov(num_clients: int, cohort_size: int, *, to_active: float = 0.05,
           mean: float = 0.1, floor: float = 0.02, alpha: float = 0.1,
           label_counts: np.ndarray | None = None,
           seed: int = 0) -> Participation:
  """Each client is an on/off two-state Markov chain whose stationary
  probability of being on is p_i (FedAU's Markovian participation; IBM/fedau
  util/util.py, ``WorkerSampler`` with method 'markov-0.05').

  As there: off -> on with probability a_i = ``to_active`` and on -> off
  with b_i = a_i (1/p_i - 1), so a_i / (a_i + b_i) = p_i; where b_i would
  exceed 1 both are divided by b_i (b_i = 1, a_i = p_i / (1 - p_i)).
  ``init`` draws each state from the stationary law, and every round first
  steps the chains, then lets the clients that are on take part. The state
  is bool[N], each client's on/off state.
  """
  if not 0 < to_active <= 1:
    raise ValueError(f'to_active (the off -> on transition probability) '
                     f'must be in (0, 1], got {to_active!r}')
  p = participation_probabilities(num_clients, mean=mean, floor=floor,
                                  alpha=alpha, label_counts=label_counts,
                                  seed=seed)
  _check_buffer('markov', num_clients, cohort_size, p[:, None])
  to_inactive = to_active * (1 / p - 1)
  scale = np.maximum(to_inactive, 1.0)
  turn_on = jnp.asarray(to_active / scale, jnp.float32)
  turn_off = jnp.asarray(to_inactive / scale, jnp.float32)
  probability = jnp.asarray(p, jnp.float32)

  def init(key):
    return jax.random.uniform(key, (num_clients,)) < probability

  def sample(key, on, round):
    del round
    k_step, k_buffer = jax.random.split(key)
    u = jax.random.uniform(k_step, (num_clients,))
    on = jnp.where(on, u >= turn_off, u < turn_on)
    return (*_fill_buffer(k_buffer, on, cohort_size), on)

  return Participation(init, sample, cohort_size, p)


def cyclic(num_clients: int, cohort_size: int, *, cycle: int = 100,
           mean: float = 0.1, floor: float = 0.02, alpha: float = 0.1,
           label_counts: np.ndarray | None = None,
           seed: int = 0) -> Participation:
  """Each client alternates A_i rounds on and I_i rounds off (FedAU's
  cyclic participation; IBM/fedau util/util.py, ``WorkerSampler`` with
  method 'cyclic-100'): A_i = max(1, round(cycle p_i)) (half to even, as
  NumPy rounds), I_i = max(1, cycle - A_i).

  As there, every client starts off and first turns on in round r_i, drawn
  uniformly from 0..I_i - 1 by ``init`` (the state, int32[N]); client i
  takes part in round t iff t >= r_i and (t - r_i) mod (A_i + I_i) < A_i.
  The starts are not spread over whole cycles, so clients with p_i near
  1/2 or more are on together early in each cycle; the buffer check counts
  the worst round. ``probabilities`` are the long-run frequencies
  A_i / (A_i + I_i): p_i to within 1/cycle (the rounding, and every client
  is off for at least one round a cycle).
  """
  if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 2:
    raise ValueError(f'cycle (rounds in one on/off cycle) must be an integer '
                     f'>= 2, got {cycle!r}')
  p = participation_probabilities(num_clients, mean=mean, floor=floor,
                                  alpha=alpha, label_counts=label_counts,
                                  seed=seed)
  on_rounds = np.maximum(1, np.round(cycle * p)).astype(np.int64)
  off_rounds = np.maximum(1, cycle - on_rounds)
  _check_buffer('cyclic', num_clients, cohort_size,
                _cyclic_marginals(on_rounds, off_rounds, cycle))
  on_count = jnp.asarray(on_rounds, jnp.int32)
  period = jnp.asarray(on_rounds + off_rounds, jnp.int32)
  off_count = jnp.asarray(off_rounds, jnp.int32)

  def init(key):
    return jax.random.randint(key, (num_clients,), 0, off_count, jnp.int32)

  def sample(key, first_on, round):
    since = round - first_on
    active = (since >= 0) & (jnp.remainder(since, period) < on_count)
    return (*_fill_buffer(key, active, cohort_size), first_on)

  return Participation(init, sample, cohort_size,
                       on_rounds / (on_rounds + off_rounds))


def _cyclic_marginals(on_rounds, off_rounds, cycle):
  """[N, 2 cycle]: the probability that a cyclic client is on in round t,
  over its uniform first round r in 0..I - 1 (the count of r <= t with
  (t - r) mod (A + I) < A, over I). Rounds 0..2 cycle - 1 hold the start
  and a whole period of every client with period A + I = cycle; those with
  A = cycle (period cycle + 1, on from round 0) count as always on."""
  a, i = on_rounds[:, None], off_rounds[:, None]
  period = a + i
  t = np.arange(2 * cycle)[None]

  def on_before(x):  # rounds s in 0..x - 1 with s mod period < a
    return (x // period) * a + np.minimum(x % period, a)

  marginal = (on_before(t + 1) - on_before(t - np.minimum(t, i - 1))) / i
  return np.where(period > cycle, 1.0, marginal)


def _fill_buffer(key, active, cohort_size):
  """(ids, present): the active clients in random order, then absent slots;
  a uniformly random ``cohort_size`` of them when more are active."""
  priority = jnp.where(active, jax.random.uniform(key, active.shape), -1.0)
  top, ids = jax.lax.top_k(priority, cohort_size)
  return ids.astype(jnp.int32), top >= 0


def _check_cohort(num_clients, cohort_size):
  if not 1 <= cohort_size <= num_clients:
    raise ConfigError(
        f'config.clients_per_round: cohort of {cohort_size} clients is '
        f'impossible in a federation of {num_clients}; valid: 1..{num_clients}')


def _check_buffer(name, num_clients, cohort_size, marginals):
  """Refuses a buffer below mean + SAFETY_SDS sd of the participant count
  in the worst round; ``marginals`` [N, rounds]: P(client i takes part in
  round t), independently across clients."""
  _check_cohort(num_clients, cohort_size)
  mean = marginals.sum(axis=0)
  sd = np.sqrt((marginals * (1 - marginals)).sum(axis=0))
  worst = int(np.argmax(mean + SAFETY_SDS * sd))
  safe = min(num_clients,
             math.ceil(mean[worst] + SAFETY_SDS * sd[worst] - 1e-9))
  when = ' in the busiest round' if marginals.shape[1] > 1 else ''
  if cohort_size < safe:
    raise ConfigError(
        f'config.clients_per_round: a buffer of {cohort_size} slots is too '
        f'small for {name} participation, where {mean[worst]:.1f} clients '
        f'(sd {sd[worst]:.1f}) take part{when} on average; the smallest '
        f'safe value is {safe} (mean + {SAFETY_SDS} sd); valid: '
        f'{safe}..{num_clients}')
