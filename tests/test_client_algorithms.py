"""Client algorithms with state across rounds (FedProx, SCAFFOLD, FedAvg-M,
SCAFFOLD-M, DiLoCo): against a NumPy reference on a quadratic federation,
SCAFFOLD's fix of client drift, the beta = 1 reductions, sharding, resume
and bad input."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedavg_synthetic
from conftest import assert_trees_close, counting
from fedround import train
from fedround.aggregators import build_aggregator
from fedround.client import make_client
from fedround.client_algorithms import CLIENT_ALGORITHMS, init_store
from fedround.data import FederatedData, uniform
from fedround.messages import identity
from fedround.registry import ConfigError
from fedround.rounds import (make_mesh, make_round, make_rounds, place,
                             replicate)
from fedround.server import init_server_state, optimizer_step

DIM = 3


class Point(nn.Module):
  """The model is a point w; an example (a, s) scores s * (w - a), so the
  loss 0.5 ||s (w - a)||^2 has gradient s^2 (w - a)."""

  @nn.compact
  def __call__(self, x):
    w = self.param('w', nn.initializers.zeros, (DIM,))
    return x[:, DIM:] * (w - x[:, :DIM])


def squared(residuals, labels, valid):
  del labels
  per_example = 0.5 * jnp.sum(residuals ** 2, axis=-1)
  return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def quadratic_federation(num_clients=4, seed=0):
  """Client i: F_i(w) = 0.5 sum_j A_ij (w_j - a_ij)^2, far-apart optima and
  very different curvatures, so local steps drift."""
  rng = np.random.default_rng(seed)
  optima = rng.normal(scale=3.0, size=(num_clients, DIM))
  curvature = rng.uniform(0.1, 2.0, size=(num_clients, DIM))
  xs = [np.tile(np.concatenate([a, np.sqrt(c)]), (2, 1)).astype(np.float32)
        for a, c in zip(optima, curvature)]
  ys = [np.zeros(2, np.int32)] * num_clients
  data = FederatedData.from_clients(xs, ys, xs[0], ys[0], num_classes=1)
  optimum = (curvature * optima).sum(0) / curvature.sum(0)
  return data, optima, curvature, optimum


def build(algorithm, data, *, cohort=None, local_steps=5,
          learning_rate=0.1, mesh=None):
  """The round and its initial state on the quadratic federation."""
  model = Point()
  algorithm = CLIENT_ALGORITHMS.build(algorithm, 'algorithm')
  client = make_client(model.apply, optax.sgd, batch_size=2,
                       max_examples=data.max_examples,
                       local_steps=local_steps, objective=squared,
                       algorithm=algorithm)
  num_clients = data.num_clients
  aggregator = build_aggregator('weighted_mean')
  round_ = make_round(client=client, message=identity(),
                      aggregator=aggregator,
                      server_update=optimizer_step(optax.sgd), mesh=mesh,
                      participation=uniform(num_clients,
                                            cohort or num_clients))
  params = model.init(jax.random.PRNGKey(0), data.train.x[:1])
  state = init_server_state(
      params, server_update=optimizer_step(optax.sgd),
      aggregator=aggregator,
      key=jax.random.PRNGKey(1), client_learning_rate=learning_rate,
      server_learning_rate=1.0, shared=algorithm.init_shared(params))
  store = init_store(algorithm, params, num_clients, optax.sgd)
  return round_, place(state, store, mesh, num_clients)


def run_rounds(algorithm, data, rounds, mesh=None, **kwargs):
  """``rounds`` jitted rounds; returns (cohort ids, state, store) after
  each."""
  round_, (state, store) = build(algorithm, data, mesh=mesh, **kwargs)
  round_, count = counting(round_)
  data = replicate(data, mesh)
  step = jax.jit(round_.fn)
  states = []
  for _ in range(rounds):
    cohort_ids = round_.cohort(state)[0]
    state, store, _ = step(state, store, data)
    states.append((np.asarray(cohort_ids), state, store))
  assert count == [1]
  return states


def test_rounds_past_num_active_leave_the_store_alone():
  """make_rounds skips rounds past num_active without copying the store;
  the store must still come out as after the active rounds only."""
  data, *_ = quadratic_federation(num_clients=6)
  one = run_rounds('scaffold', data, 1, cohort=3)[-1][1:]
  round_, (state, store) = build('scaffold', data, cohort=3)
  scanned = make_rounds(round_.fn, 3)(state, store, data, jnp.int32(1))[:2]
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(scanned)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def numpy_scaffold_m(optima, curvature, cohorts, beta, local_steps, lr):
  """SCAFFOLD-M as ALGORITHMS.md section 5 writes it, client by client."""
  n, w = len(optima), np.zeros(DIM)
  c, c_i, g = np.zeros(DIM), np.zeros((n, DIM)), np.zeros(DIM)
  history = []
  for cohort in cohorts:
    deltas, new_c = [], {}
    for i in cohort:
      x, grads = w.copy(), []
      for _ in range(local_steps):
        grad = curvature[i] * (x - optima[i])
        grads.append(grad)
        x = x - lr * (beta * (grad - c_i[i] + c) + (1 - beta) * g)
      deltas.append(x - w)
      new_c[i] = np.mean(grads, axis=0)
    delta = np.mean(deltas, axis=0)
    g = -delta / (lr * local_steps)
    c = c + sum(new_c[i] - c_i[i] for i in cohort) / n
    for i in cohort:
      c_i[i] = new_c[i]
    w = w + delta
    history.append((w.copy(), c.copy(), c_i.copy(), g.copy()))
  return history


@pytest.mark.parametrize('beta', [1.0, 0.3])
def test_scaffold_m_equals_numpy_reference(beta):
  data, optima, curvature, _ = quadratic_federation(num_clients=6)
  states = run_rounds(f'scaffold_m(beta={beta})', data, 3, cohort=3)
  cohorts = [ids[:3] for ids, _, _ in states]
  assert len({tuple(sorted(c)) for c in cohorts}) > 1  # cohorts differ
  expected = numpy_scaffold_m(optima, curvature, cohorts, beta, 5, 0.1)
  for (_, state, store), (w, c, c_i, g) in zip(states, expected):
    np.testing.assert_allclose(state.params['params']['w'], w, rtol=1e-5,
                               atol=1e-5)
    shared = state.shared
    np.testing.assert_allclose(shared.control['params']['w'], c, atol=1e-5)
    np.testing.assert_allclose(store['params']['w'], c_i, atol=1e-5)
    if beta < 1:
      np.testing.assert_allclose(shared.momentum['params']['w'], g,
                                 rtol=1e-5, atol=1e-5)


def test_fedavg_m_and_fedprox_equal_numpy_reference():
  data, optima, curvature, _ = quadratic_federation()
  lr, steps, beta, mu = 0.1, 5, 0.4, 0.5
  for spec in (f'fedavg_m(beta={beta})', f'fedprox(mu={mu})'):
    states = run_rounds(spec, data, 2)
    w, g = np.zeros(DIM), np.zeros(DIM)
    for _, state, _ in states:
      deltas = []
      for i in range(len(optima)):
        x = w.copy()
        for _ in range(steps):
          grad = curvature[i] * (x - optima[i])
          x = x - lr * (beta * grad + (1 - beta) * g if 'fedavg_m' in spec
                        else grad + mu * (x - w))
        deltas.append(x - w)
      g = -np.mean(deltas, 0) / (lr * steps)
      w = w + np.mean(deltas, 0)
      np.testing.assert_allclose(state.params['params']['w'], w, rtol=1e-5,
                                 atol=1e-5, err_msg=spec)


def test_scaffold_reaches_the_optimum_where_fedavg_drifts():
  """Full participation, 10 local steps on very different quadratics:
  FedAvg's fixed point is off the global optimum, SCAFFOLD's is on it."""
  data, _, _, optimum = quadratic_federation()
  distance = {}
  for algorithm in ('fedavg', 'scaffold'):
    state = run_rounds(algorithm, data, 150, local_steps=10)[-1][1]
    distance[algorithm] = np.linalg.norm(
        np.asarray(state.params['params']['w']) - optimum)
  assert distance['scaffold'] < 1e-3, distance
  assert distance['fedavg'] > 0.1, distance


def _small(rounds, algorithm, aggregator='weighted_mean', **client):
  config = fedavg_synthetic.get_config()
  config.aggregator = aggregator
  config.data.num_clients = 16  # the store splits over the 8 devices
  config.clients_per_round = 5
  config.rounds = rounds
  config.eval_every = 2
  config.checkpoint_every = 4
  config.progress = False
  config.client.algorithm = algorithm
  config.client.update(client)
  return config


@pytest.mark.parametrize('momentum, plain', [
    ('fedavg_m(beta=1.0)', 'fedavg'), ('scaffold_m(beta=1.0)', 'scaffold')])
def test_beta_one_is_the_plain_algorithm(momentum, plain, tmp_path):
  got = train.run(_small(3, momentum), str(tmp_path / 'm')).state.params
  want = train.run(_small(3, plain), str(tmp_path / 'p')).state.params
  assert_trees_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('algorithm, client', [
    ('scaffold_m(beta=0.5)', {}),
    ('diloco', {'optimizer': 'adamw', 'learning_rate': 0.01})])
def test_client_state_resumes_bit_exactly(algorithm, client, tmp_path):
  """With config.aggregator left empty: the algorithm's own rule (the
  uniform mean for both) is written to config.json and resumes."""
  stopped, fresh = str(tmp_path / 'stopped'), str(tmp_path / 'fresh')
  small = lambda rounds: _small(rounds, algorithm, aggregator='', **client)
  train.run(small(4), stopped)
  with open(os.path.join(stopped, 'config.json')) as f:
    assert json.load(f)['aggregator'] == 'mean'
  resumed = train.run(small(8), stopped)
  assert resumed.summary['resumed_from'] == 4
  straight = train.run(small(8), fresh)
  assert jax.tree.leaves(resumed.store)  # state is kept
  for a, b in zip(jax.tree.leaves((resumed.state, resumed.store)),
                  jax.tree.leaves((straight.state, straight.store))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('algorithm, rule', [
    ('fedavg', 'weighted_mean'), ('fedprox(mu=1.0)', 'weighted_mean'),
    ('scaffold', 'mean'), ('fedavg_m', 'mean'), ('scaffold_m(beta=0.5)', 'mean'),
    ('diloco', 'mean')])
def test_an_empty_aggregator_is_the_papers_rule(algorithm, rule):
  """SCAFFOLD, FedAvg-M, SCAFFOLD-M and DiLoCo average the cohort
  uniformly in their papers; FedAvg and FedProx (its code) by examples. A
  rule that is set stays, and the caller's config is not changed."""
  config = _small(2, algorithm, aggregator='')
  assert train.resolve(config).aggregator == rule
  assert train.build(config).config.aggregator == rule
  assert config.aggregator == ''
  config.aggregator = 'median'
  assert train.resolve(config).aggregator == 'median'


def test_replicas_with_client_state_equal_separate_runs(tmp_path):
  configs = []
  for seed in (0, 1):
    config = _small(3, 'scaffold_m(beta=0.5)')
    config.seed = seed
    configs.append(config)
  together = train.run_replicas(configs, [str(tmp_path / f'r{s}')
                                          for s in (0, 1)])
  for config, result in zip(configs, together):
    alone = train.run(config, str(tmp_path / f'alone{config.seed}'))
    assert_trees_close((result.state.shared, result.store),
                       (alone.state.shared, alone.store), atol=1e-5)
    assert_trees_close(result.state.params, alone.state.params, atol=1e-5)


def test_sharded_equals_unsharded():
  data, *_ = quadratic_federation(num_clients=8)
  mesh = make_mesh()
  assert mesh is not None and mesh.size == 8
  one = run_rounds('scaffold_m(beta=0.5)', data, 3, cohort=5)[-1][1:]
  many = run_rounds('scaffold_m(beta=0.5)', data, 3, cohort=5,
                    mesh=mesh)[-1][1:]
  assert_trees_close(one[0].params, many[0].params, atol=1e-6)
  assert_trees_close((one[0].shared, one[1]), (many[0].shared, many[1]),
                     atol=1e-6)
  # The store stays split over the devices: 8 clients, one row each.
  rows = many[1]['params']['w'].addressable_shards
  assert len(rows) == 8 and rows[0].data.shape == (1, DIM)


def test_non_finite_client_leaves_the_store_untouched():
  data, *_ = quadratic_federation()
  x = np.asarray(data.train.x).copy()
  x[data.train.start[2]:data.train.start[3], 0] = np.nan  # client 2's
  data = data.replace(train=data.train.replace(x=jnp.asarray(x)))  # optimum
  _, state, store = run_rounds('scaffold', data, 2)[-1]
  own = np.asarray(store['params']['w'])
  np.testing.assert_array_equal(own[2], 0.0)  # never written
  assert np.isfinite(own).all()
  assert np.isfinite(state.shared.control['params']['w']).all()
  assert np.isfinite(state.params['params']['w']).all()


@pytest.mark.parametrize('spec, expected', [
    ('fedprox(mu=-0.1)', 'mu (the proximal weight) must be a number >= 0'),
    ('fedavg_m(beta=0)', 'beta must be in (0, 1]'),
    ('scaffold_m(beta=1.5)', 'beta must be in (0, 1]'),
    ('scafold', 'scaffold'),  # unknown: the valid names are listed
])
def test_bad_algorithm_fails_before_training(spec, expected, tmp_path):
  with pytest.raises(ConfigError) as error:
    train.run(_small(2, spec), str(tmp_path))
  assert str(error.value).startswith('config.client.algorithm: ')
  assert expected in str(error.value)
  assert not os.path.exists(tmp_path / 'metrics.jsonl')
