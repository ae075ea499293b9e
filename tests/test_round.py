"""The round as one jitted, sharded function: sharding, tracing, NaN safety."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedavg_digits
import fedavg_synthetic
from conftest import assert_trees_close
from fedround import train
from fedround.aggregators import build_aggregator
from fedround.client import make_client
from fedround.data import FederatedData, uniform
from fedround.messages import identity
from fedround.models import MODELS
from fedround.rounds import make_round, make_rounds
from fedround.server import init_server_state, optimizer_step


def _run_rounds(config, rounds):
  experiment = train.build(config)
  fn = make_rounds(experiment.round.fn, rounds)
  state, _, metrics = fn(*experiment.init_state(), experiment.data,
                         jnp.int32(rounds))
  return experiment, state, metrics


def test_sharded_round_equals_single_device():
  """The default jobs: fedavg_digits as configured for one chunk of
  eval_every rounds (the unsharded chunk is the program test_train's
  default-job run compiles, so the suite builds its CNN round once), and
  fedavg_synthetic for 3 rounds of 1 local epoch (its 20 epochs would only
  cost run time)."""
  assert jax.device_count() == 8
  for get_config, epochs in ((fedavg_digits.get_config, 0),
                             (fedavg_synthetic.get_config, 1)):
    config = get_config()
    assert config.clients_per_round == 10  # not divisible by 8: padded to 16
    rounds = config.eval_every if not epochs else 3
    config.client.local_epochs = epochs or config.client.local_epochs
    results = {}
    for shard in (False, True):
      config.shard = shard
      experiment, state, metrics = _run_rounds(config, rounds)
      results[shard] = (state.params, metrics)
    assert experiment.mesh is not None and experiment.mesh.size == 8
    assert experiment.round.cohort_buffer == 16
    assert_trees_close(results[True][0], results[False][0], atol=2e-5)
    np.testing.assert_array_equal(results[True][1]['participants'], 10)
    np.testing.assert_allclose(results[True][1]['train_loss'],
                               results[False][1]['train_loss'], rtol=1e-5)


def test_sharded_client_updates_are_per_client():
  """Guards the shard_map pitfall: replicated params get summed gradients
  across devices unless made device-varying. One client per device makes
  the per-client deltas distinct; they must match the unsharded ones. On
  logistic regression: the pitfall is the gradient's, whatever the model."""
  config = fedavg_digits.get_config()
  config.model = 'logistic'
  config.clients_per_round = 8
  config.client.local_steps = 2
  deltas = {}
  for shard in (False, True):
    config.shard = shard
    experiment = train.build(config)
    state, store = experiment.init_state()
    new_state, _, _ = jax.jit(experiment.round.fn)(state, store,
                                                   experiment.data)
    deltas[shard] = jax.tree.map(jnp.subtract, new_state.params,
                                 experiment.init_state()[0].params)
  assert_trees_close(deltas[True], deltas[False], atol=1e-6)


def test_round_traces_once_over_many_calls(tmp_path, traces):
  config = fedavg_synthetic.get_config()
  config.rounds = 7
  config.eval_every = 2  # 4 calls, the last one a partial chunk
  config.checkpoint_every = 4
  config.progress = False
  config.client.local_epochs = 1
  result = train.run(config, str(tmp_path))
  assert traces[0] == 1
  assert int(result.state.round) == 7

  experiment = train.build(config)
  fn = make_rounds(experiment.round.fn, 3)
  state, store = experiment.init_state()
  for active in (3, 3, 1, 3):
    state, store, _ = fn(state, store, experiment.data, jnp.int32(active))
  assert traces[1] == 1
  assert fn._cache_size() == 1
  assert int(state.round) == 10


def test_nonfinite_client_updates_are_excluded_and_counted(tiny_federation):
  data = tiny_federation
  poisoned = np.asarray(data.x).copy()
  poisoned[1, 0, 0] = np.nan                 # client 1 trains to NaN
  poisoned[3, 0, 0] = np.inf                 # client 3 to Inf/NaN
  bad = data.replace(x=poisoned)
  clean = FederatedData.from_clients(
      [np.asarray(data.x[i, :data.n[i]]) for i in (0, 2)],
      [np.asarray(data.y[i, :data.n[i]]) for i in (0, 2)],
      data.test_x, data.test_y, 3)
  model = MODELS.build('logistic', 'model', num_classes=3)
  aggregator = build_aggregator('weighted_mean')

  def one_round(d):
    client = make_client(model.apply, optax.sgd, batch_size=8,
                         max_examples=d.max_examples, local_epochs=1)
    round_ = make_round(client=client, message=identity(),
                        aggregator=aggregator,
                        server_update=optimizer_step(optax.sgd),
                        participation=uniform(d.num_clients, d.num_clients))
    params = model.init(jax.random.PRNGKey(0), d.x[0, :1])
    state = init_server_state(params, server_update=optimizer_step(optax.sgd),
                              aggregator=aggregator,
                              key=jax.random.PRNGKey(0),
                              client_learning_rate=0.3,
                              server_learning_rate=1.0)
    state, _, metrics = jax.jit(round_.fn)(state, (), d)
    return state, metrics

  state, metrics = one_round(bad)
  assert int(metrics['nonfinite_excluded']) == 2
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(np.asarray(leaf)).all()
  expected, clean_metrics = one_round(clean)  # FedAvg of clients 0 and 2
  assert int(clean_metrics['nonfinite_excluded']) == 0
  assert_trees_close(state.params, expected.params, atol=1e-6)
