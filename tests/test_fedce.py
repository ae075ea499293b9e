"""FedCE: a hand-computed case, a NumPy reference over two rounds with a
changing cohort and validation splits, absent clients, identical clients,
refusals, jit and a client-sharded stack."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators import fedce as fedce_lib
from fedround.rounds import make_mesh
from fedround.aggregators.base import RoundContext
from fedround.data import ClientData

DIM, CLASSES, VAL = 3, 3, 6


def logistic(params, x):
  return x @ params['w'] + params['b']


def run(rule, updates, state, params, weights, client_ids, jit=True):
  fn = _jitted(rule) if jit else functools.partial(_call, rule)
  return fn(updates, state, params, jnp.asarray(weights, jnp.float32),
            jnp.asarray(client_ids, jnp.int32))


def _call(rule, updates, state, params, weights, client_ids):
  return rule.update(updates, state, params, weights=weights, key=None,
                     context=RoundContext(client_ids=client_ids,
                                          round=jnp.int32(0)))


@functools.cache
def _jitted(rule):
  return jax.jit(functools.partial(_call, rule))


# NumPy reference, written from the docstring's definitions with explicit
# vectors (no Gram matrix).


def flat(tree):
  """[C, d] float64 rows of a stacked pytree (leaves in tree order)."""
  return np.concatenate([np.asarray(u, np.float64).reshape(len(u), -1)
                         for u in jax.tree.leaves(tree)], axis=1)


def unflat(vector, like):
  out, start = [], 0
  leaves, tree = jax.tree.flatten(like)
  for leaf in leaves:
    size = int(np.prod(np.shape(leaf)))
    out.append(vector[start:start + size].reshape(np.shape(leaf)))
    start += size
  return jax.tree.unflatten(tree, out)


def cosine(x, y):
  return x @ y / (max(np.linalg.norm(x), 1e-8) * max(np.linalg.norm(y), 1e-8))


def normalise_floor(values, floor):
  total = values.sum()
  shares = values / total if total > 1e-6 * len(values) else np.full(
      len(values), 1 / len(values))
  return np.maximum(shares, floor)


def accuracy(params, x, y, count):
  predicted = np.argmax(x[:count] @ params['w'] + params['b'], axis=1)
  return np.mean(predicted == y[:count])


class NumpyFedCE:

  def __init__(self, population, validation=None, floor=1e-3):
    self.rounds = np.zeros(population, int)
    self.gradient = np.zeros(population)
    self.data = np.zeros(population)
    self.coefficient = np.zeros(population)
    self.validation, self.floor = validation, floor

  def update(self, updates, params, weights, client_ids):
    deltas = flat(updates)
    slots = [s for s in range(len(weights))
             if weights[s] > 0 and client_ids[s] >= 0]
    ids = [client_ids[s] for s in slots]
    deltas = deltas[slots]
    n = len(slots)
    prior = np.array([self.coefficient[i] if self.rounds[i] else 1 / n
                      for i in ids])
    current = prior / prior.sum()
    consensus = current @ deltas
    a, m = [], []
    for k, i in enumerate(ids):
      without = consensus - current[k] * deltas[k]
      self.rounds[i] += 1
      t = self.rounds[i]
      self.gradient[i] += ((1 - cosine(deltas[k], without)) -
                           self.gradient[i]) / t
      a.append(self.gradient[i])
      if self.validation is not None:
        x, y, count = (v[i] for v in self.validation)
        step = without / (1 - current[k]) if n > 1 else 0 * without
        model = unflat(flat(jax.tree.map(lambda p: p[None], params))[0]
                       + step, params)
        self.data[i] += ((1 - accuracy(model, x, y, count)) -
                         self.data[i]) / t
        m.append(self.data[i])
    terms = normalise_floor(np.array(a), self.floor)
    if self.validation is not None:
      terms = terms + normalise_floor(np.array(m), self.floor)
    c = normalise_floor(terms, self.floor)
    self.coefficient[ids] = c
    return unflat(c @ deltas, jax.tree.map(lambda u: u[0], updates))

  def assert_state_close(self, state):
    np.testing.assert_array_equal(state.rounds, self.rounds)
    for name in ('gradient', 'data', 'coefficient'):
      np.testing.assert_allclose(getattr(state, name), getattr(self, name),
                                 atol=2e-6, err_msg=name)


def federation(population=5, seed=0):
  """Params, a validation split per client (padded rows hold garbage)."""
  rng = np.random.default_rng(seed)
  params = {'w': rng.normal(size=(DIM, CLASSES)).astype(np.float32),
            'b': rng.normal(size=CLASSES).astype(np.float32)}
  x = rng.normal(size=(population, VAL, DIM)).astype(np.float32)
  y = rng.integers(0, CLASSES, (population, VAL)).astype(np.int32)
  n = rng.integers(1, VAL + 1, population).astype(np.int32)
  return params, (x, y, n)


def stored(validation):
  """The padded splits as the federation stores them (None stays None)."""
  return None if validation is None else ClientData.from_padded(*validation)


def random_updates(num_clients, seed):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=(num_clients, DIM, CLASSES)).astype(
              np.float32),
          'b': rng.normal(size=(num_clients, CLASSES)).astype(np.float32)}


# Cases.

ROOT_HALF = 1 / np.sqrt(2)


def test_hand_case_over_two_rounds():
  # Delta = (1, 0), (0, 1), (0, -1); round 1 starts uniform: u = (1/3, 0).
  #   u - Delta_1 / 3 = 0            -> cos 0           -> a_1 = 1
  #   u - Delta_2 / 3 = (1, -1) / 3  -> cos -1/sqrt(2)  -> a_2 = 1 + 1/sqrt2
  #   u - Delta_3 / 3 = (1, 1) / 3   -> cos -1/sqrt(2)  -> a_3 = 1 + 1/sqrt2
  # c = a / (3 + sqrt 2) = (0.22654, 0.38673, 0.38673), aggregate (c_1, 0).
  updates = {'v': np.array([[1.0, 0], [0, 1], [0, -1]], np.float32)}
  rule = fedce_lib.fedce(population=3)
  state = rule.init(None)
  aggregate, state = run(rule, updates, state, None, [5, 1, 9], [0, 1, 2])
  a = np.array([1, 1 + ROOT_HALF, 1 + ROOT_HALF])
  np.testing.assert_allclose(state.gradient, a, rtol=1e-6)
  np.testing.assert_allclose(state.coefficient, a / a.sum(), rtol=1e-6)
  np.testing.assert_allclose(aggregate['v'], [a[0] / a.sum(), 0], atol=1e-7)
  np.testing.assert_array_equal(state.rounds, [1, 1, 1])
  np.testing.assert_array_equal(state.data, 0)
  # Round 2 from c above: u = (c_1, 0); client 1 again cos 0 -> a_1 = 1;
  # clients 2, 3: cos -c_2 / |(c_1, c_2)| = -0.86286, so a = 1 - mean of
  # (-1/sqrt 2, -0.86286) = 1.78498; c = (0.21882, 0.39059, 0.39059).
  reference = NumpyFedCE(3)
  reference.update(updates, None, [5, 1, 9], [0, 1, 2])
  expected = reference.update(updates, None, [5, 1, 9], [0, 1, 2])
  aggregate, state = run(rule, updates, state, None, [5, 1, 9], [0, 1, 2])
  reference.assert_state_close(state)
  np.testing.assert_allclose(state.gradient, [1, 1.78498, 1.78498],
                             atol=1e-5)
  np.testing.assert_allclose(state.coefficient, [0.21882, 0.39059, 0.39059],
                             atol=1e-5)
  np.testing.assert_allclose(aggregate['v'], expected['v'], atol=1e-6)
  np.testing.assert_allclose(aggregate['v'], [0.21882, 0], atol=1e-5)


@pytest.mark.parametrize('with_validation', [False, True])
def test_matches_numpy_over_changing_cohorts(with_validation):
  params, validation = federation()
  validation = validation if with_validation else None
  rule = fedce_lib.fedce(population=5, apply_fn=logistic,
                         validation=stored(validation))
  reference = NumpyFedCE(5, validation)
  state = rule.init(params)
  cohorts = [([3.0, 1, 2, 0], [0, 1, 2, -1]),   # slot 3 empty
             ([3.0, 1, 2, 0], [2, 3, 1, 4]),    # client 4 non-finite
             ([1.0, 1, 1, 1], [4, 0, 3, 2])]
  for seed, (weights, client_ids) in enumerate(cohorts):
    updates = random_updates(4, seed)
    aggregate, state = run(rule, updates, state, params, weights, client_ids)
    expected = reference.update(updates, params, weights, client_ids)
    assert_trees_close(aggregate, expected, atol=2e-6)
    reference.assert_state_close(state)
    params = jax.tree.map(lambda p, a: np.asarray(p + a), params, aggregate)
  if with_validation:  # the data term varies, so it shaped c
    assert np.ptp(np.asarray(state.data)) > 0.1


def test_absent_clients_are_ignored_and_keep_their_state():
  params, validation = federation()
  rule = fedce_lib.fedce(population=5, apply_fn=logistic,
                         validation=stored(validation))
  _, state = run(rule, random_updates(5, 0), rule.init(params), params,
                 np.ones(5), np.arange(5))
  updates = random_updates(5, 1)
  garbage = jax.tree.map(lambda u: u.copy(), updates)
  for leaf in jax.tree.leaves(garbage):
    leaf[1], leaf[3] = 1e6, np.nan
  # Client 1 is not in the cohort; client 3 is present, its update excluded.
  aggregate, after = run(rule, garbage, state, params, [1.0, 1, 1, 0, 1],
                         [0, -1, 2, 3, 4])
  kept = [0, 2, 4]
  alone, alone_state = run(rule, jax.tree.map(lambda u: u[kept], updates),
                           state, params, np.ones(3), kept)
  assert_trees_close(aggregate, alone, atol=1e-6)
  assert_trees_close(after, alone_state, atol=1e-6)
  for name in after._fields:
    np.testing.assert_array_equal(np.asarray(getattr(after, name))[[1, 3]],
                                  np.asarray(getattr(state, name))[[1, 3]])
  assert np.all(np.asarray(after.rounds)[kept] == 2)


@pytest.mark.parametrize('with_validation', [False, True])
def test_identical_clients_get_the_plain_mean(with_validation):
  params, (x, y, n) = federation(population=4)
  validation = None
  if with_validation:  # every client holds the same split
    validation = (np.repeat(x[:1], 4, 0), np.repeat(y[:1], 4, 0),
                  np.repeat(n[:1], 4, 0))
  rule = fedce_lib.fedce(population=4, apply_fn=logistic,
                         validation=stored(validation))
  state = rule.init(params)
  for seed in range(2):
    one = random_updates(1, seed)
    updates = jax.tree.map(lambda u: np.repeat(u, 4, 0), one)
    aggregate, state = run(rule, updates, state, params, [1.0, 7, 2, 3],
                           np.arange(4))
    np.testing.assert_allclose(state.coefficient, 0.25, rtol=1e-6)
    assert_trees_close(aggregate, jax.tree.map(lambda u: u[0], one),
                       atol=1e-6)


def test_parallel_clients_carry_no_direction_signal():
  # Every cosine is 1 (a = 0) up to float32 round-off, which differs per
  # client; it must not pick the weights: c is uniform.
  rule = fedce_lib.fedce(population=7)
  scales = np.array([0.5, 1.9, 1.0, 0.7, 1.3, 1.1, 0.6], np.float32)
  updates = jax.tree.map(lambda u: u * scales.reshape((-1, 1, 1)[:u.ndim]),
                         random_updates(1, 0))
  aggregate, state = run(rule, updates, rule.init(None), None, np.ones(7),
                         np.arange(7))
  assert np.max(np.asarray(state.gradient)) < 1e-6
  np.testing.assert_allclose(state.coefficient, 1 / 7, rtol=1e-6)
  assert_trees_close(aggregate, jax.tree.map(lambda u: u.mean(0), updates),
                     atol=1e-6)


def test_a_lone_client_gets_all_the_weight():
  params, validation = federation()
  rule = fedce_lib.fedce(population=5, apply_fn=logistic,
                         validation=stored(validation))
  updates = random_updates(3, 0)
  aggregate, state = run(rule, updates, rule.init(params), params,
                         [0, 2.0, 0], [-1, 3, 4])
  assert_trees_close(aggregate, jax.tree.map(lambda u: u[1], updates),
                     atol=1e-6)
  np.testing.assert_array_equal(state.coefficient, [0, 0, 0, 1, 0])
  np.testing.assert_array_equal(state.gradient, [0, 0, 0, 1, 0])  # cos 0
  # Without the others the model is params itself.
  x, y, count = (v[3] for v in validation)
  np.testing.assert_allclose(state.data[3], 1 - accuracy(params, x, y, count),
                             rtol=1e-6)


def test_bad_parameters_are_refused():
  _, validation = federation()
  for kwargs, message in [
      (dict(population=0), 'population'), (dict(floor=1.0), 'floor'),
      (dict(floor=-0.1), 'floor'),
      (dict(validation=stored(validation), apply_fn=None), 'apply_fn'),
      (dict(population=4, validation=stored(validation)), 'one split per client')]:
    with pytest.raises(ValueError, match=message):
      fedce_lib.fedce(**{'population': 5, 'apply_fn': logistic, **kwargs})


def test_eager_matches_jit():
  params, validation = federation()
  rule = fedce_lib.fedce(population=5, apply_fn=logistic,
                         validation=stored(validation))
  args = (random_updates(4, 0), rule.init(params), params, [1.0, 2, 0, 3],
          [4, 0, 1, 2])
  assert_trees_close(run(rule, *args, jit=False), run(rule, *args),
                     atol=1e-6)


def test_client_sharded_stack_matches_unsharded():
  params, validation = federation(population=10)
  rule = fedce_lib.fedce(population=10, apply_fn=logistic,
                         validation=stored(validation))
  updates = random_updates(8, 0)
  weights = np.array([1.0, 2, 0, 3, 4, 0, 5, 6], np.float32)
  client_ids = np.array([9, 1, -1, 3, 4, 5, 6, 0], np.int32)
  mesh = make_mesh()
  sharded = jax.device_put((updates, weights, client_ids),
                           NamedSharding(mesh, P('clients')))
  state = rule.init(params)
  expected = run(rule, updates, state, params, weights, client_ids)
  got = run(rule, sharded[0], state, params, *sharded[1:])
  assert_trees_close(got, expected, atol=1e-6)


def test_state_is_a_fixed_carry_for_scanned_rounds():
  params, validation = federation()
  rule = fedce_lib.fedce(population=5, apply_fn=logistic,
                         validation=stored(validation))
  stacked = jax.tree.map(lambda *u: np.stack(u), *[random_updates(4, s)
                                                   for s in range(3)])
  ids = np.array([[0, 1, 2, 3], [4, 0, 1, -1], [2, 3, 4, 0]], np.int32)

  def round_(state, inputs):
    updates, client_ids = inputs
    aggregate, state = rule.update(
        updates, state, params, weights=jnp.ones(4), key=None,
        context=RoundContext(client_ids=client_ids))
    return state, aggregate

  state, _ = jax.lax.scan(round_, rule.init(params), (stacked, ids))
  np.testing.assert_array_equal(state.rounds, [3, 2, 2, 2, 2])
