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
from fedround.data import ClientData, FederatedData, uniform
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
  poisoned = np.asarray(data.train.x).copy()
  poisoned[data.train.start[1], 0] = np.nan  # client 1 trains to NaN
  poisoned[data.train.start[3], 0] = np.inf  # client 3 to Inf/NaN
  bad = data.replace(train=data.train.replace(x=poisoned))
  clean = FederatedData.from_clients(
      [data.train.client(i)[0] for i in (0, 2)],
      [data.train.client(i)[1] for i in (0, 2)],
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
    params = model.init(jax.random.PRNGKey(0), d.train.x[:1])
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


def _padded(data: FederatedData) -> FederatedData:
  """``data`` in the padded [N, max_n] layout, its padding NaN: a read of a
  padding row would poison the round."""
  train_ = data.train
  x = np.full((data.num_clients, data.max_examples) + data.example_shape,
              np.nan, np.float32)
  y = np.full((data.num_clients, data.max_examples), -1, np.int32)
  for i in range(data.num_clients):
    xi, yi = train_.client(i)
    x[i, :len(yi)], y[i, :len(yi)] = xi, yi
  return data.replace(train=ClientData.from_padded(x, y, train_.n))


def test_flat_storage_trains_as_the_padded_layout(tiny_federation):
  """The flat federation and the same one padded to [N, max_n] (NaN in the
  padding) give the same parameters and metrics over 2 rounds, with local
  epochs (a partial last batch), with local steps, and with the clients'
  Fisher outputs (fisher_merging reads every example)."""
  flat = tiny_federation
  padded = _padded(flat)
  assert padded.train.x.shape[0] == 4 * 8 > flat.train.x.shape[0] == 22
  model = MODELS.build('logistic', 'model', num_classes=3)
  params = model.init(jax.random.PRNGKey(0), flat.train.x[:1])
  for schedule, rule in ((dict(local_epochs=2), 'weighted_mean'),
                         (dict(local_steps=3), 'weighted_mean'),
                         (dict(local_steps=2), 'fisher_merging')):
    aggregator = build_aggregator(rule)
    client = make_client(model.apply, optax.sgd, batch_size=3,
                         max_examples=flat.max_examples,
                         outputs=aggregator.reads.outputs, **schedule)
    round_ = make_round(client=client, message=identity(),
                        aggregator=aggregator,
                        server_update=optimizer_step(optax.sgd),
                        participation=uniform(4, 3))
    fn = make_rounds(round_.fn, 2)
    results = []
    for data in (flat, padded):
      state = init_server_state(
          params, server_update=optimizer_step(optax.sgd),
          aggregator=aggregator, key=jax.random.PRNGKey(1),
          client_learning_rate=0.3, server_learning_rate=1.0)
      results.append(fn(state, (), data, jnp.int32(2)))
    (flat_state, _, flat_metrics), (padded_state, _, padded_metrics) = results
    assert np.isfinite(np.asarray(flat_metrics['train_loss'])).all()
    assert_trees_close(flat_state.params, padded_state.params, atol=1e-6)
    assert_trees_close(flat_metrics, padded_metrics, atol=1e-6)
