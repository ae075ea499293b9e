"""FedAU and its paper's baselines: weights on hand-written participation
sequences (with and without the cutoff K), the baselines by hand, a loop
transcribing the official code, absent slots, jit, and a sharded stack."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators import AGGREGATORS, build_aggregator
from fedround.aggregators import fedau as fedau_lib
from fedround.data.participation import Participation, uniform
from fedround.rounds import make_mesh
from fedround.aggregators.base import RoundContext

N = 3  # clients in the hand-written federation
SLOTS = 4  # cohort buffer

# FedAU and its paper's baselines, from the registry: every rule of fedau.py.
RULES = [name for name in AGGREGATORS.names()
         if AGGREGATORS.get(name, 'aggregator').__module__ == fedau_lib.__name__]


def build(spec, population=N, slots=SLOTS, seed=0):
  """``spec`` as a run builds it, under a participation model of known
  probabilities (which inverse_probability reads)."""
  probabilities = np.random.default_rng(seed).uniform(0.05, 1, population)
  return build_aggregator(
      spec, 'aggregator', num_clients=slots, population=population,
      participation=Participation(None, None, slots, probabilities))

# The hand-written sequence: per round, the present (id, weight) pairs. In
# round 4 client 0 takes part but its update was non-finite (weight 0).
SEQUENCE = [[(0, 5.0)], [(1, 2.0)], [], [(0, 1.0), (1, 1.0), (2, 3.0)],
            [(2, 1.0), (0, 0.0)], [(0, 1.0), (1, 1.0), (2, 1.0)]]

# omega_i each round (before the round's own participation is recorded).
# No cutoff:
#   r0 {0}: none completed -> 1, 1, 1. Then 0 records 1; S = (0, 1, 1).
#   r1 {1}: 1, 1, 1. Then 1 records S_1 + 1 = 2; S = (1, 0, 2).
#   r2 {}:  1, 2, 1. S = (2, 1, 3).
#   r3 all: 1, 2, 1. Then 0 records 3 (1, 3), 1 records 2 (2, 2),
#           2 records 4: omega = 2, 2, 4; S = 0.
#   r4 {2, 0 (non-finite)}: 2, 2, 4. Then 0 records 1 (1, 3, 1), 2 records
#           1 (4, 1): omega = 5/3, 2, 5/2; S = (0, 1, 0).
#   r5 all: 5/3, 2, 5/2.
OMEGA = [[1, 1, 1], [1, 1, 1], [1, 2, 1], [1, 2, 1], [2, 2, 4],
         [5 / 3, 2, 5 / 2]]
# Cutoff K = 2 (a client idle for 2 rounds records 2 and restarts):
#   r0 {0}: 1, 1, 1. Then 0 records 1; S = (0, 1, 1).
#   r1 {1}: 1, 1, 1. Then 1 records 2; 2 reaches S = 2: records 2;
#           S = (1, 0, 0). omega = 1, 2, 2.
#   r2 {}:  1, 2, 2. Then 0 reaches 2: records 2 (1, 2) -> 3/2;
#           S = (0, 1, 1).
#   r3 all: 3/2, 2, 2. Then 0 records 1 (1, 2, 1) -> 4/3, 1 records 2 ->
#           2, 2 records 2 -> 2; S = 0.
#   r4 {2, 0 (non-finite)}: 4/3, 2, 2. Then 0 records 1 -> 5/4, 2 records
#           1 (2, 2, 1) -> 5/3; S = (0, 1, 0).
#   r5 all: 5/4, 2, 5/3.
OMEGA_K2 = [[1, 1, 1], [1, 1, 1], [1, 2, 2], [1.5, 2, 2], [4 / 3, 2, 2],
            [5 / 4, 2, 5 / 3]]


def cohort(present, slots=SLOTS, garbage=np.nan):
  """(updates, weights, client_ids) for one round: client i's update is
  (i + 1) e_i, so the aggregate reveals each weight; free slots hold
  ``garbage``, as does a present client of weight 0."""
  updates = np.full((slots, N), garbage, np.float32)
  weights = np.zeros(slots, np.float32)
  ids = np.full(slots, -1, np.int32)
  # Fill from the back, so present clients do not sit in the first slots.
  for slot, (client, weight) in zip(range(slots - 1, -1, -1), present):
    ids[slot], weights[slot] = client, weight
    if weight > 0:
      updates[slot] = (client + 1) * np.eye(N)[client]
  return {'u': jnp.asarray(updates)}, jnp.asarray(weights), jnp.asarray(ids)


@functools.cache
def jitted(rule):
  return jax.jit(lambda u, s, w, ids: rule.update(
      u, s, weights=w, key=None,
      context=RoundContext(client_ids=ids, round=0)))


def run(rule, sequence=SEQUENCE, step=None):
  """The aggregates and states of ``rule`` over ``sequence``."""
  step = step or jitted(rule)
  state = rule.init({'u': jnp.zeros(N)})
  aggregates, states = [], []
  for present in sequence:
    updates, weights, ids = cohort(present)
    aggregate, state = step(updates, state, weights, ids)
    aggregates.append(np.asarray(aggregate['u']))
    states.append(state)
  return aggregates, states


def expected(present, omega):
  """(1/N) sum over usable clients of omega_i Delta_i, Delta_i = (i+1) e_i."""
  out = np.zeros(N)
  for client, weight in present:
    if weight > 0:
      out[client] += omega[client] * (client + 1) / N
  return out


@pytest.mark.parametrize('cutoff, omega', [(None, OMEGA), (2, OMEGA_K2)])
def test_fedau_weights_by_hand(cutoff, omega):
  rule = fedau_lib.fedau(cutoff, population=N)
  aggregates, states = run(rule)
  for t, present in enumerate(SEQUENCE):
    np.testing.assert_allclose(aggregates[t], expected(present, omega[t]),
                               rtol=1e-6, err_msg=f'round {t}')
    if t + 1 < len(SEQUENCE):  # the weights the next round will use
      np.testing.assert_allclose(fedau_lib.fedau_weights(states[t]),
                                 omega[t + 1], rtol=1e-6)
      np.testing.assert_allclose(states[t].mean_weight,
                                 np.mean(omega[t + 1]), rtol=1e-6)
    used = [omega[t][c] for c, _ in present]
    np.testing.assert_allclose(states[t].participant_weight,
                               np.mean(used) if used else 0, rtol=1e-6)


def test_cutoff_one_is_average_all():
  aggregates, _ = run(fedau_lib.fedau(1, population=N))
  for aggregate, present in zip(aggregates, SEQUENCE):
    np.testing.assert_allclose(aggregate, expected(present, [1, 1, 1]))


def official_weights(participation, cutoff):
  """omega per round, transcribing IBM/fedau main.py (weighting 'adaptive',
  k_value = cutoff): the weight is read before the interval is recorded."""
  clients = participation.shape[1]
  not_participating = [0] * clients
  intervals = [[] for _ in range(clients)]
  omegas = []
  for row in participation:
    omegas.append([np.mean(x) if x else 1.0 for x in intervals])
    for n in range(clients):
      if row[n]:
        intervals[n].append(not_participating[n] + 1)
        not_participating[n] = 0
      else:
        not_participating[n] += 1
        if not_participating[n] >= cutoff:
          intervals[n].append(not_participating[n])
          not_participating[n] = 0
  return np.array(omegas)


@pytest.mark.parametrize('cutoff', [None, 1, 3])
def test_fedau_matches_the_official_loop(cutoff):
  clients, slots, rounds = 6, 6, 60
  rng = np.random.default_rng(1)
  probability = np.array([0.05, 0.1, 0.2, 0.4, 0.7, 0.9])
  participation = rng.random((rounds, clients)) < probability
  rule = fedau_lib.fedau(cutoff, population=clients)
  step = jax.jit(lambda s, ids: rule.update(
      {'u': jnp.ones((slots, 1))}, s, weights=(ids >= 0).astype(jnp.float32),
      key=None, context=RoundContext(client_ids=ids)))
  state = rule.init({'u': jnp.zeros(1)})
  reference = official_weights(participation, cutoff or 10**9)
  for t, row in enumerate(participation):
    np.testing.assert_allclose(fedau_lib.fedau_weights(state), reference[t],
                               rtol=1e-6, err_msg=f'round {t}')
    ids = np.where(row, np.arange(clients), -1).astype(np.int32)
    aggregate, state = step(state, jnp.asarray(ids[::-1]))
    np.testing.assert_allclose(
        aggregate['u'], [np.sum(reference[t][row]) / clients], rtol=1e-5)


def test_baselines_by_hand():
  # Slots: client 2 (n = 5), absent (NaN), client 0 (n = 1), client 1
  # excluded (weight 0, NaN row). Deltas: 3 e_2 and 1 e_0.
  updates, weights, ids = cohort([(2, 5.0), (0, 1.0), (1, 0.0)],
                                 slots=4)
  args = dict(weights=weights, key=None,
              context=RoundContext(client_ids=ids))

  def apply(rule):
    state = rule.init({'u': jnp.zeros(N)})
    return np.asarray(jax.jit(lambda u, s: rule.update(u, s, **args)[0])(
        updates, state)['u'])

  # |S| = 2 usable clients; example counts ignored.
  np.testing.assert_allclose(apply(fedau_lib.average_participating()),
                             [1 / 2, 0, 3 / 2])
  np.testing.assert_allclose(apply(fedau_lib.average_all(N)),
                             [1 / 3, 0, 1])
  known = Participation(lambda key: (), None, 4, np.array([0.5, 0.25, 0.2]))
  # (1/3) (1 / 0.5 * e_0 + 1 / 0.2 * 3 e_2) = (2/3, 0, 5).
  np.testing.assert_allclose(apply(fedau_lib.inverse_probability(known)),
                             [2 / 3, 0, 5], rtol=1e-6)
  # Uniform participation (p_i = C/N) weighs the mean of the cohort.
  np.testing.assert_allclose(
      apply(fedau_lib.inverse_probability(uniform(N, 2))), [1 / 2, 0, 3 / 2],
      rtol=1e-6)


@pytest.mark.parametrize('garbage', [0.0, 1e9, np.nan])
def test_absent_slots_are_ignored(garbage):
  present = [(2, 1.0), (0, 1.0), (1, 0.0)]
  u_clean, w_clean, ids_clean = cohort(present, slots=3, garbage=0.0)
  u_padded, w_padded, ids_padded = cohort(present, slots=8, garbage=garbage)
  assert len(RULES) >= 4
  for rule in map(build, RULES):
    state = rule.init({'u': jnp.zeros(N)})
    a, state_a = jitted(rule)(u_clean, state, w_clean, ids_clean)
    b, state_b = jitted(rule)(u_padded, state, w_padded, ids_padded)
    assert_trees_close((a, state_a), (b, state_b))
    assert np.all(np.isfinite(b['u']))


def test_nobody_present():
  rule = fedau_lib.fedau(population=N)
  aggregate, state = run(rule, [[], []])
  np.testing.assert_array_equal(aggregate, 0)
  np.testing.assert_array_equal(state[-1].since_last, [2, 2, 2])
  assert float(state[-1].participant_weight) == 0


def test_jit_equals_eager():
  rule = fedau_lib.fedau(2, population=N)
  eager = lambda u, s, w, ids: rule.update(
      u, s, weights=w, key=None, context=RoundContext(client_ids=ids))
  assert_trees_close(run(rule, step=eager), run(rule))


def test_client_sharded_stack_matches_unsharded():
  mesh = make_mesh()
  clients = NamedSharding(mesh, P('clients'))
  population, slots = 40, 16
  rng = np.random.default_rng(0)
  # FedAU with its cutoff K engaged within the 4 rounds.
  specs = {'fedau': 'fedau(cutoff=5)'}
  for name in RULES:
    rule = build(specs.get(name, name), population, slots)
    state = rule.init({'w': jnp.zeros((3, 2))})
    step = jax.jit(lambda u, s, w, ids, rule=rule: rule.update(
        u, s, weights=w, key=None, context=RoundContext(client_ids=ids)))
    for t in range(4):
      updates = {'w': rng.normal(size=(slots, 3, 2)).astype(np.float32)}
      ids = rng.choice(population, slots, replace=False).astype(np.int32)
      ids[rng.random(slots) < 0.3] = -1
      weights = np.where(ids >= 0, rng.uniform(0.5, 3, slots), 0)
      weights[rng.integers(slots)] = 0  # a non-finite update, excluded
      inputs = (jax.tree.map(jnp.asarray, updates),
                jnp.asarray(weights, jnp.float32), jnp.asarray(ids))
      sharded = jax.device_put(inputs, clients)
      assert sharded[0]['w'].sharding.spec == P('clients')
      expected_out = step(inputs[0], state, *inputs[1:])
      got = step(sharded[0], state, *sharded[1:])
      assert_trees_close(got, expected_out, atol=1e-6)
      state = expected_out[1]


@pytest.mark.parametrize('make, message', [
    (lambda: fedau_lib.fedau(0, population=3), 'integer >= 1 or None'),
    (lambda: fedau_lib.fedau(-2, population=3), 'integer >= 1 or None'),
    (lambda: fedau_lib.fedau(2.5, population=3), 'integer >= 1 or None'),
    (lambda: fedau_lib.fedau(population=0), 'population'),
    (lambda: fedau_lib.average_all(0), 'population'),
    (lambda: fedau_lib.inverse_probability(Participation(None, None, 2)),
     'config.participation'),
    (lambda: fedau_lib.inverse_probability(Participation(
        None, None, 2, np.array([0.5, 0.0]))), 'in (0, 1]'),
])
def test_impossible_parameters_are_refused(make, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    make()


def test_slots_that_are_not_the_cohort_are_refused():
  rule = fedau_lib.fedau(population=N)
  with pytest.raises(ValueError, match='client_ids'):
    rule.update({'u': jnp.zeros((2, N))}, rule.init(None),
                weights=jnp.ones(2), key=None,
                context=RoundContext(client_ids=jnp.zeros(4, jnp.int32)))


def test_state_can_be_donated():
  # The round donates its state: init must not share one buffer twice.
  state = fedau_lib.fedau(population=N).init(None)
  jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
