"""FedLAW: FedAvg at zero steps, Adam steps against a NumPy reference with
finite-difference gradients, a lower proxy loss than FedAvg, the logged
gamma and lambdas, minibatches, refusals, jit and a client-sharded stack."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators import fedlaw as fedlaw_lib
from fedround.aggregators import weighted
from fedround.rounds import make_mesh
from fedround.aggregators.base import RoundContext

DIM, CLASSES = 3, 4


def logistic(params, x):
  return x @ params['w'] + params['b']


def problem(num_clients=4, proxy_size=24, seed=0, spread=1.0):
  """Params, client updates and a proxy set labelled by a teacher model."""
  rng = np.random.default_rng(seed)
  params = {'w': rng.normal(size=(DIM, CLASSES)).astype(np.float32) * 0.3,
            'b': rng.normal(size=CLASSES).astype(np.float32) * 0.3}
  updates = {k: (spread * rng.normal(size=(num_clients,) + v.shape))
                .astype(np.float32) for k, v in params.items()}
  x = rng.normal(size=(proxy_size, DIM)).astype(np.float32)
  teacher = rng.normal(size=(DIM, CLASSES))
  y = np.argmax(x @ teacher, axis=1).astype(np.int32)
  return params, updates, (x, y)


def build(proxy, population=4, **kwargs):
  return fedlaw_lib.fedlaw(population=population, apply_fn=logistic,
                           proxy=proxy, **kwargs)


def run(rule, params, updates, weights, client_ids=None, key=None, jit=True):
  weights = jnp.asarray(weights, jnp.float32)
  if client_ids is None:
    client_ids = np.arange(len(weights))
  client_ids = jnp.asarray(client_ids, jnp.int32)
  key = jax.random.key(0) if key is None else key
  fn = _jitted(rule) if jit else functools.partial(_call, rule)
  return fn(updates, weights, client_ids, params, key)


def _call(rule, updates, weights, client_ids, params, key):
  return rule.update(updates, rule.init(params), params, weights=weights,
                     key=key, context=RoundContext(client_ids=client_ids,
                                                   round=jnp.int32(0)))


@functools.cache
def _jitted(rule):
  return jax.jit(functools.partial(_call, rule))


# NumPy reference: the objective over full client models, as in the paper.


def flat_models(params, updates):
  """[C, d] float64 client models w_i = params + Delta_i (w then b)."""
  w = params['w'][None] + updates['w']
  b = params['b'][None] + updates['b']
  return np.concatenate([w.reshape(len(w), -1), b], axis=1).astype(np.float64)


def proxy_loss(model, x, y):
  logits = x @ model[:DIM * CLASSES].reshape(DIM, CLASSES) + model[-CLASSES:]
  logits = logits - logits.max(axis=1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -np.mean(log_p[np.arange(len(y)), y])


def merged(variables, models):
  """gamma * sum_i softmax(l)_i w_i with variables = (l_1..l_C, g)."""
  logits, log_gamma = variables[:-1], variables[-1]
  lam = np.exp(logits - logits.max())
  lam /= lam.sum()
  return np.exp(log_gamma) * lam @ models


def numpy_fedlaw(params, updates, sizes, proxy, steps, lr=0.01, b1=0.5,
                 b2=0.999, eps=1e-8):
  """Adam on (l, g) from (log n_i / sum n, 0), full-batch, gradients by
  central differences in float64; returns merged - params as a vector."""
  models = flat_models(params, updates)
  x, y = (np.asarray(a, np.float64) for a in proxy)
  y = y.astype(int)
  objective = lambda v: proxy_loss(merged(v, models), x, y)
  v = np.append(np.log(sizes / sizes.sum()), 0.0)
  m, s = np.zeros_like(v), np.zeros_like(v)
  for t in range(1, steps + 1):
    grad = np.array([(objective(v + h) - objective(v - h)) / 2e-6
                     for h in np.eye(len(v)) * 1e-6])
    m = b1 * m + (1 - b1) * grad
    s = b2 * s + (1 - b2) * grad ** 2
    v = v - lr * (m / (1 - b1 ** t)) / (np.sqrt(s / (1 - b2 ** t)) + eps)
  return merged(v, models) - as_vector(params), np.exp(v[-1])


def as_vector(tree):
  return np.concatenate([np.asarray(tree['w']).ravel(),
                         np.asarray(tree['b']).ravel()])


# Cases.


def test_zero_steps_is_fedavg_exactly():
  params, updates, proxy = problem(num_clients=5)
  weights = np.array([3.0, 0, 7, 1, 5], np.float32)  # slot 1 absent
  updates['w'][1] = 1e6  # whatever an absent row holds is ignored
  step, state = run(build(proxy, population=5, steps=0), params, updates,
                    weights)
  kept = {k: np.where(weights.reshape((-1,) + (1,) * (u.ndim - 1)) > 0, u, 0)
          for k, u in updates.items()}
  fedavg, _ = jax.jit(weighted.weighted_mean().update)(
      kept, (), weights=jnp.asarray(weights), key=None)
  for leaf, expected in zip(jax.tree.leaves(step), jax.tree.leaves(fedavg)):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))
  assert float(state.gamma) == 1.0
  np.testing.assert_allclose(state.lambdas, weights / weights.sum(),
                             rtol=1e-6)


@pytest.mark.parametrize('steps', [1, 3])
def test_adam_steps_match_numpy_reference(steps):
  # The first Adam step moves every variable by lr against its gradient's
  # sign (m_hat = g, v_hat = g^2); later steps follow the moments.
  params, updates, proxy = problem(num_clients=3)
  sizes = np.array([2.0, 5.0, 3.0])
  step, state = run(build(proxy, population=3, steps=steps), params, updates,
                    sizes)
  expected, gamma = numpy_fedlaw(params, updates, sizes, proxy, steps)
  np.testing.assert_allclose(as_vector(step), expected, atol=2e-5)
  np.testing.assert_allclose(float(state.gamma), gamma, rtol=1e-5)
  assert float(state.gamma) != 1.0


def test_learned_weights_lower_the_proxy_loss_and_are_logged():
  params, updates, proxy = problem(num_clients=6, proxy_size=64, seed=3)
  weights = np.array([10.0, 20, 0, 5, 40, 25], np.float32)
  client_ids = np.array([4, 0, -1, 7, 2, 9])
  rule = build(proxy, population=10, steps=300)
  step, state = run(rule, params, updates, weights, client_ids)
  fedavg, _ = run(build(proxy, population=10, steps=0), params, updates,
                  weights, client_ids)
  loss = lambda s: proxy_loss(
      as_vector(jax.tree.map(jnp.add, params, s)).astype(np.float64),
      *proxy)
  assert loss(step) < loss(fedavg) - 0.05
  # The log is what was applied: gamma * sum_i lambda_i w_i - params.
  lambdas = np.asarray(state.lambdas)
  np.testing.assert_allclose(lambdas.sum(), 1, rtol=1e-5)
  assert np.all(lambdas[[1, 3, 5, 6, 8]] == 0)  # never in the cohort
  per_slot = lambdas[np.maximum(client_ids, 0)] * (weights > 0)
  models = flat_models(params, updates)
  expected = float(state.gamma) * per_slot @ models - as_vector(params)
  np.testing.assert_allclose(as_vector(step), expected, atol=1e-5)


def test_minibatches_and_default_epochs():
  params, updates, proxy = problem(num_clients=4, proxy_size=200)
  sizes = np.array([1.0, 2, 3, 4])
  # The official default: 20 epochs of minibatches of 128, so 40 steps.
  default, _ = run(build(proxy), params, updates, sizes)
  forty, _ = run(build(proxy, steps=40), params, updates, sizes)
  assert_trees_close(default, forty, atol=0, rtol=0)
  # Batches at least the proxy set are full-batch and draw nothing.
  full, _ = run(build(proxy, steps=5, batch_size=200), params, updates, sizes)
  larger, _ = run(build(proxy, steps=5, batch_size=1000), params, updates,
                  sizes, key=jax.random.key(7))
  assert_trees_close(full, larger, atol=0, rtol=0)
  # Minibatch draws depend on the key.
  minibatched = build(proxy, steps=5, batch_size=16)
  a, _ = run(minibatched, params, updates, sizes)
  b, _ = run(minibatched, params, updates, sizes, key=jax.random.key(1))
  assert not np.allclose(as_vector(a), as_vector(b))
  with pytest.raises(ValueError, match='needs a key'):
    minibatched.update(
        updates, None, params, weights=jnp.asarray(sizes), key=None,
        context=RoundContext(client_ids=jnp.arange(4)))


def test_nobody_usable_keeps_the_model():
  params, updates, proxy = problem()
  step, state = run(build(proxy, steps=10), params, updates, np.zeros(4))
  for leaf in jax.tree.leaves(step):
    np.testing.assert_array_equal(leaf, 0)
  assert float(state.gamma) == 1.0
  np.testing.assert_array_equal(state.lambdas, 0)


def test_a_lone_client_learns_only_gamma():
  params, updates, proxy = problem()
  step, state = run(build(proxy, steps=20), params, updates, [0, 4.0, 0, 0])
  np.testing.assert_array_equal(state.lambdas, [0, 1, 0, 0])
  model = jax.tree.map(lambda p, u: p + u[1], params, updates)
  expected = jax.tree.map(lambda m, p: float(state.gamma) * m - p, model,
                          params)
  assert_trees_close(step, expected, atol=1e-5)


def test_missing_proxy_and_bad_parameters_are_refused():
  with pytest.raises(ValueError, match=r'proxy set: set config\.data\.'
                     r'proxy_fraction > 0 \(the paper uses 2% of the test'):
    fedlaw_lib.fedlaw(population=4, apply_fn=logistic, proxy=None)
  proxy = problem()[2]
  for kwargs, message in [
      (dict(steps=-1), 'steps'), (dict(steps=2.5), 'steps'),
      (dict(learning_rate=0), 'learning_rate'), (dict(b1=1.0), 'b1'),
      (dict(b2=-0.1), 'b2'), (dict(batch_size=0), 'batch_size'),
      (dict(population=0), 'population'), (dict(apply_fn=None), 'apply_fn')]:
    with pytest.raises(ValueError, match=message):
      fedlaw_lib.fedlaw(**{'population': 4, 'apply_fn': logistic,
                           'proxy': proxy, **kwargs})
  with pytest.raises(ValueError, match='as many'):
    fedlaw_lib.fedlaw(population=4, apply_fn=logistic,
                      proxy=(proxy[0], proxy[1][:-1]))


def test_eager_matches_jit():
  params, updates, proxy = problem()
  rule = build(proxy, steps=7, batch_size=10)
  eager = run(rule, params, updates, [1.0, 2, 0, 3], jit=False)
  jitted = run(rule, params, updates, [1.0, 2, 0, 3])
  assert_trees_close(eager, jitted, atol=1e-6)


def test_client_sharded_stack_matches_unsharded():
  params, updates, proxy = problem(num_clients=8)
  weights = np.array([1.0, 2, 0, 3, 4, 0, 5, 6], np.float32)
  client_ids = np.array([0, 1, -1, 3, 4, 5, 6, 7], np.int32)
  rule = build(proxy, population=8, steps=30, batch_size=8)
  mesh = make_mesh()
  sharded = jax.device_put((updates, weights, client_ids),
                           NamedSharding(mesh, P('clients')))
  assert_trees_close(run(rule, params, *sharded),
                     run(rule, params, updates, weights, client_ids),
                     atol=1e-5)


def test_state_is_a_fixed_carry_for_scanned_rounds():
  params, updates, proxy = problem()
  rule = build(proxy, steps=3)

  def round_(state, key):
    return rule.update(updates, state, params, weights=jnp.ones(4), key=key,
                       context=RoundContext(client_ids=jnp.arange(4)))[1], None

  state, _ = jax.lax.scan(round_, rule.init(params),
                          jax.random.split(jax.random.key(0), 2))
  assert state.gamma.shape == () and state.lambdas.shape == (4,)
