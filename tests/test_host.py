"""Federations on the host (config.data.placement='host'): the same
parameters as on the device, sharded or not, with client state and an
attack; chunks are prefetched in order; a resumed host run continues
exactly; packing keeps every cohort client's rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedavg_synthetic
from conftest import assert_trees_close
from fedround import train
from fedround.data import ClientData, host
from fedround.registry import ConfigError


def _config(placement, shard=True, **client):
  config = fedavg_synthetic.get_config()
  config.rounds, config.eval_every, config.checkpoint_every = 6, 3, 3
  config.progress, config.shard = False, shard
  config.client.local_epochs = 1
  config.client.update(client)
  config.data.placement = placement
  return config


@pytest.mark.parametrize('shard, client, attack', [
    (True, {}, 'none'),
    (False, {'algorithm': 'scaffold'}, 'label_flip')])
def test_host_placement_equals_device_placement(tmp_path, shard, client,
                                                attack):
  results = {}
  for placement in ('device', 'host'):
    config = _config(placement, shard, **client)
    config.attack.name = attack
    config.attack.fraction = 0.2 if attack != 'none' else 0.0
    results[placement] = train.run(config, str(tmp_path / placement))
  device, on_host = results['device'], results['host']
  assert_trees_close(on_host.state.params, device.state.params, atol=1e-6)
  assert_trees_close(on_host.store, device.store, atol=1e-6)
  assert on_host.summary['final_test_accuracy'] == pytest.approx(
      device.summary['final_test_accuracy'], abs=1e-6)
  assert on_host.summary['placement'] == 'host'
  assert on_host.summary['chunks_prefetched'] == 1  # 2 chunks, 1 ahead


def test_a_resumed_host_run_continues_exactly(tmp_path):
  straight = train.run(_config('host'), str(tmp_path / 'straight'))
  config = _config('host')
  config.rounds = 3
  train.run(config, str(tmp_path / 'resumed'))
  resumed = train.run(_config('host'), str(tmp_path / 'resumed'))
  assert resumed.summary['resumed_from'] == 3
  for a, b in zip(jax.tree.leaves(straight.state.params),
                  jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(a, b)


def test_the_feed_prefetches_chunks_in_order():
  config = _config('host', shard=False)
  experiment = train.build(config)
  state, _ = experiment.init_state()
  cohorts = jax.jit(experiment.round.cohorts, static_argnums=1)
  train_data = experiment.data.train
  rows = host.capacity(train_data, experiment.round.cohort_buffer)
  feed = host.HostFeed(train_data, cohorts, 3, rows, lambda packed: packed)
  expected = np.asarray(cohorts(state, 9))  # 3 chunks of 3 rounds
  try:
    for chunk in range(3):
      taken = feed.take(state)
      want = host.pack(train_data, expected[3 * chunk:3 * chunk + 3], rows)
      for got, wanted in zip(jax.tree.leaves(taken), jax.tree.leaves(want)):
        np.testing.assert_array_equal(got, wanted)
      # Uniform participation keeps no state: a chunk moves the round on.
      state = state.replace(round=state.round + 3)
  finally:
    feed.close()
  assert feed.prefetched == 2  # the first chunk is packed on demand


def test_pack_keeps_each_cohort_clients_rows():
  xs = [np.full((n, 2), i, np.float32) for i, n in enumerate((3, 1, 4, 2))]
  data = ClientData.from_clients(xs, [np.arange(len(x)) for x in xs])
  packed = host.pack(data, np.array([[2, 0, 2], [1, 3, 1]]), rows=9)
  assert packed.x.shape == (2, 9, 2)
  np.testing.assert_array_equal(packed.n, [[3, 0, 4, 0], [0, 1, 0, 2]])
  for r, members in enumerate(((0, 2), (1, 3))):
    round_data = jax.tree.map(lambda a: a[r], packed)
    for m in members:
      x, y = jax.jit(round_data.rows)(m, jnp.arange(data.n[m]))
      np.testing.assert_array_equal(x, xs[m])
      np.testing.assert_array_equal(y, np.arange(data.n[m]))
  owner = ClientData(*(a[0] for a in (packed.x, packed.y, packed.start,
                                      packed.n)), 4).owner()
  np.testing.assert_array_equal(owner, [0, 0, 0, 2, 2, 2, 2, -1, -1])
  assert host.capacity(data, 2) == 7


def test_host_placement_mistakes_fail_before_training(tmp_path):
  config = _config('disk')
  with pytest.raises(ConfigError, match="placement must be one of 'device', "
                     "'host', got 'disk'"):
    train.check(config)
  config = _config('host')
  config.eval_train = True
  with pytest.raises(ConfigError, match="eval_train reads every client"):
    train.check(config)
  with pytest.raises(ConfigError, match='replicas share one federation'):
    train.run_replicas([_config('host'), _config('host')],
                       [str(tmp_path / 'a'), str(tmp_path / 'b')])


def test_host_placement_in_a_multi_process_run_fails_before_training(
    monkeypatch):
  """(Two real processes reach this check the same way: build runs it on
  each before any training.)"""
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(ConfigError, match="placement='host' runs in one "
                     'process'):
    train.check(_config('host'))
