"""Packed lanes and the keyed epoch order: the same training, less idling."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedavg_synthetic
from conftest import assert_trees_close
from fedround import lanes, shuffle, train
from fedround.registry import ConfigError
from fedround.rounds import make_rounds


def _permutation(key, n, size=None):
  positions = jnp.arange(size or n)
  return np.asarray(jax.jit(shuffle.permute)(
      jnp.minimum(positions, n - 1), n,
      shuffle.round_keys(key, shuffle.num_rounds(size or n))))[:n]


@pytest.mark.parametrize('n', [1, 2, 3, 5, 8, 13, 64, 100, 1000, 4099])
def test_permute_is_a_permutation_of_any_size(n):
  order = _permutation(jax.random.PRNGKey(n), n)
  np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_permute_depends_on_the_key_and_is_uniform():
  """Two keys give two orders; over 24,000 keys the 24 orders of 4 items
  come out equally often (chi-square, 23 degrees of freedom: 80 is beyond
  its 1e-7 quantile)."""
  assert (_permutation(jax.random.PRNGKey(0), 50)
          != _permutation(jax.random.PRNGKey(1), 50)).any()
  keys = jax.random.split(jax.random.PRNGKey(7), 24_000)
  orders = np.asarray(jax.jit(jax.vmap(lambda k: shuffle.permute(
      jnp.arange(4), 4, shuffle.round_keys(k, shuffle.num_rounds(4)))))(keys))
  index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
  counts = np.bincount([index[tuple(o)] for o in orders], minlength=24)
  assert len(counts) == 24
  chi2 = ((counts - 1000) ** 2 / 1000).sum()
  assert chi2 < 80, (chi2, counts)


def test_pack_is_longest_first_to_the_least_loaded_lane():
  """Steps 5, 3, 3, 2, 0 in 2 lanes: 5 -> lane 0; 3 -> lane 1; 3 -> lane 1
  (3 < 5); 2 -> lane 0 (5 < 6). Lanes run 0 then 3, and 1 then 2: 7
  iterations; client 4 takes no step and gets no lane."""
  table, iterations = jax.jit(lanes.pack, static_argnums=1)(
      jnp.array([5, 3, 3, 2, 0]), 2)
  np.testing.assert_array_equal(table, [[0, 3, 5, 5, 5, 5],
                                        [1, 2, 5, 5, 5, 5]])
  assert int(iterations) == 7


def test_choose_lanes_is_the_most_within_the_idle_bound():
  equal = np.full(40, 7)
  assert lanes.choose_lanes(equal, 10) == 10
  giant = np.array([100] + [1] * 29)
  assert lanes.choose_lanes(giant, 30) == 1  # any second lane idles 45%
  sizes = np.random.default_rng(0).lognormal(4, 2, 300).astype(int) + 50
  steps = -(-sizes // 10)
  chosen = lanes.choose_lanes(steps, 30)
  assert 1 < chosen < 30
  assert lanes.simulated_idle(steps, 30, chosen) <= lanes.MAX_IDLE
  assert lanes.simulated_idle(steps, 30, chosen + 1) > lanes.MAX_IDLE


def test_make_run_idles_at_most_ten_percent():
  """make run's job (30 log-normal clients, 10 a round, 20 epochs) chooses
  its lanes so that its simulated idle fraction is within the bound; the
  rounds it trains report what they idled."""
  config = fedavg_synthetic.get_config()
  config.shard = False
  experiment = train.build(config)
  n = np.asarray(experiment.data.n)
  chosen = train.choose_lanes(config, experiment.data)
  assert chosen < config.clients_per_round
  assert lanes.simulated_idle(20 * -(-n // 10), 10, chosen) <= lanes.MAX_IDLE


def _train(config, rounds=3):
  experiment = train.build(config)
  state, store, metrics = make_rounds(experiment.round.fn, rounds)(
      *experiment.init_state(), experiment.data, jnp.int32(rounds))
  return experiment, state, store, metrics


@pytest.mark.parametrize('schedule,algorithm,packed', [
    (dict(local_epochs=2, local_steps=0), 'fedavg', 2),
    (dict(local_epochs=0, local_steps=5), 'fedavg', 3),
    (dict(local_epochs=2, local_steps=0), 'scaffold', 3),
])
def test_packed_lanes_train_as_one_lane_per_client(schedule, algorithm,
                                                   packed):
  """Synthetic's 30 clients, 10 a round: one lane per client against a few
  lanes each training several clients, unsharded and on 8 devices (2
  clients and 1 lane per device): the same parameters, per-client store
  and losses; the packed round idles less and traces once. With K steps,
  one lane per client (which hands nothing over) also runs on 8 devices."""
  config = fedavg_synthetic.get_config()
  config.client.update(algorithm=algorithm, **schedule)
  results = {}
  runs = [(False, 10), (False, packed), (True, 1)]
  if schedule['local_steps']:
    runs.append((True, 2))
  for shard, num_lanes in runs:
    config.shard, config.client.lanes = shard, num_lanes
    results[shard, num_lanes] = _train(config)
  _, state, store, metrics = results[False, 10]
  for key in runs[1:]:
    _, other_state, other_store, other_metrics = results[key]
    assert_trees_close(other_state.params, state.params, atol=1e-6)
    assert_trees_close(other_store, store, atol=1e-6)
    np.testing.assert_allclose(other_metrics['train_loss'],
                               metrics['train_loss'], rtol=1e-6)
  idle = {key: float(np.mean(r[3]['idle_step_fraction']))
          for key, r in results.items()}
  if schedule['local_steps']:
    assert idle[False, 10] == 0
  else:
    assert idle[False, packed] < idle[False, 10]


def test_lanes_must_be_positive():
  config = fedavg_synthetic.get_config()
  config.client.lanes = -1
  with pytest.raises(ConfigError, match='config.client.lanes must be a '
                     'positive integer'):
    train.build(config)
