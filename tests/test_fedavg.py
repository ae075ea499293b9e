"""FedAvg against plain NumPy, and the vmapped round against the per-client
Python loop."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedavg_digits
from conftest import assert_trees_close
from fedround import baselines, train
from fedround.aggregators import build_aggregator
from fedround.client import make_client
from fedround.data import uniform
from fedround.messages import identity
from fedround.models import MODELS
from fedround.rounds import make_round
from fedround.server import init_server_state, optimizer_step


def numpy_fedavg(w, b, data, lr, epochs, rounds):
  """Logistic regression, full-batch local GD, FedAvg weighted by n_i."""
  n = np.asarray(data.n)
  for _ in range(rounds):
    new_w, new_b = np.zeros_like(w), np.zeros_like(b)
    for i in range(len(n)):
      xi, yi = data.train.client(i)
      xi = xi.astype(np.float64)
      wi, bi = w.copy(), b.copy()
      for _ in range(epochs):
        logits = xi @ wi + bi
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(n[i]), yi] -= 1
        wi -= lr * xi.T @ p / n[i]
        bi -= lr * p.sum(0) / n[i]
      new_w += n[i] * (wi - w)
      new_b += n[i] * (bi - b)
    w, b = w + new_w / n.sum(), b + new_b / n.sum()
  return w, b


def test_fedavg_equals_numpy(tiny_federation):
  data = tiny_federation
  model = MODELS.build('logistic', 'model', num_classes=3)
  client = make_client(model.apply, optax.sgd, batch_size=8,
                       max_examples=data.max_examples, local_epochs=3)
  aggregator = build_aggregator('weighted_mean')
  round_ = make_round(client=client, message=identity(),
                      aggregator=aggregator,
                      server_update=optimizer_step(optax.sgd),
                      participation=uniform(4, 4))
  params = model.init(jax.random.PRNGKey(1), data.train.x[:1])
  state = init_server_state(params, server_update=optimizer_step(optax.sgd),
                            aggregator=aggregator, key=jax.random.PRNGKey(2),
                            client_learning_rate=0.5,
                            server_learning_rate=1.0)
  step = jax.jit(round_.fn)
  for _ in range(3):
    state, _, metrics = step(state, (), data)
  dense = params['params']['Dense_0']
  w, b = numpy_fedavg(np.asarray(dense['kernel'], np.float64),
                      np.asarray(dense['bias'], np.float64), data, lr=0.5,
                      epochs=3, rounds=3)
  got = state.params['params']['Dense_0']
  np.testing.assert_allclose(got['kernel'], w, atol=1e-5)
  np.testing.assert_allclose(got['bias'], b, atol=1e-5)
  assert int(metrics['participants']) == 4
  # The largest client (8 examples) takes 3 steps, so nobody idles.
  assert float(metrics['idle_step_fraction']) == 0.0


def test_weighted_and_uniform_mean_differ_by_weights():
  updates = {'w': jnp.array([[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]])}
  weights = jnp.array([1.0, 3.0, 0.0])  # third client absent
  fedavg = build_aggregator('weighted_mean')
  uniform_mean = build_aggregator('mean')
  got, _ = fedavg.update(updates, (), weights=weights, key=None)
  np.testing.assert_allclose(got['w'], [2.5, 5.0])
  got, _ = uniform_mean.update(updates, (), weights=weights, key=None)
  np.testing.assert_allclose(got['w'], [2.0, 4.0])
  got, _ = fedavg.update(updates, (), weights=jnp.zeros(3), key=None)
  np.testing.assert_allclose(got['w'], [0.0, 0.0])  # nobody usable: no move


def _digits_experiment(**client):
  """fedavg_digits with logistic regression: the vmapped round and the
  Python loop must agree whatever the model; its CNN is test_round's."""
  config = fedavg_digits.get_config()
  config.model = 'logistic'
  config.data.num_clients = 20
  config.clients_per_round = 6
  config.shard = False
  for key, value in client.items():
    config.client[key] = value
  return train.build(config)


def test_vmapped_round_equals_python_loop():
  for schedule in (dict(local_steps=4, local_epochs=0),
                   dict(local_steps=0, local_epochs=2)):
    experiment = _digits_experiment(**schedule)
    state, store = experiment.init_state()
    ids, _, keys, _ = experiment.round.cohort(state)
    expected = baselines.python_loop_round(
        experiment.client, state.params, experiment.data, ids, keys,
        client_learning_rate=experiment.config.client.learning_rate)
    new_state, _, _ = jax.jit(experiment.round.fn)(state, store,
                                                   experiment.data)
    assert_trees_close(new_state.params, expected, atol=1e-5)


def test_centralised_floor_takes_the_same_steps():
  """With one client the centralised step is that client's training."""
  experiment = _digits_experiment(local_steps=3, local_epochs=0)
  state, _ = experiment.init_state()
  ids, _, keys, _ = experiment.round.cohort(state)
  learning_rate = experiment.config.client.learning_rate
  one = baselines.make_centralised(experiment.client, learning_rate)(
      state.params, experiment.data, ids[:1], keys[:1])
  looped = baselines.python_loop_round(
      experiment.client, state.params, experiment.data, ids[:1], keys[:1],
      client_learning_rate=learning_rate)
  assert_trees_close(one, looped, atol=1e-5)
