"""Pre-aggregators (clipping, NNM, bucketing, ARC): hand cases, composition
through chain, invariances, absent clients, jit and sharding."""
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators import AGGREGATORS, preaggregators
from fedround.aggregators.base import chain
from fedround.aggregators.preaggregators import arc, bucketing, clip, nnm
from fedround.aggregators.weighted import mean
from fedround.rounds import make_mesh

KEY = jax.random.PRNGKey(0)
# Every registered pre-aggregator (those of aggregators/preaggregators.py),
# given the hyper-parameters it requires; those that keep one row per
# client (all but bucketing) also permute with the clients and ignore the
# absent ones row by row.
REQUIRED = {'f': 2, 'max_norm': 2.0, 'size': 3}


def _registered():
  parts = {}
  for name in AGGREGATORS.names():
    factory = AGGREGATORS.get(name, 'aggregator')
    if factory.__module__ != preaggregators.__name__:
      continue
    parameters = inspect.signature(factory).parameters
    required = [p for p in REQUIRED if p in parameters
                and parameters[p].default is inspect.Parameter.empty]
    parts[name] = factory(**{p: REQUIRED[p] for p in required})
  return parts


PRE = _registered()
ROW_BY_ROW = {name: pre for name, pre in PRE.items()
              if pre.num_outputs(16) == 16}


def apply(pre, updates, weights=None, key=KEY):
  """The jitted pre-aggregator's (updates', weights') as NumPy arrays."""
  updates = jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), updates)
  if weights is None:
    weights = np.ones(len(jax.tree.leaves(updates)[0]))
  updates, weights = _jitted(pre)(updates, jnp.asarray(weights, jnp.float32),
                                  key)
  return jax.tree.map(np.asarray, updates), np.asarray(weights)


@functools.cache
def _jitted(pre):
  assert pre.init(None) == ()
  return jax.jit(lambda u, w, key: pre.update(u, (), weights=w, key=key)[0])


def test_clip_by_the_norm_over_all_leaves():
  updates = {'a': np.array([[3.0], [0.3], [50.0]]),
             'b': np.array([[4.0], [0.4], [np.nan]])}
  clipped, weights = apply(clip(max_norm=1.0), updates, [2, 1, 0])
  np.testing.assert_allclose(clipped['a'], [[0.6], [0.3], [0]], rtol=1e-6)
  np.testing.assert_allclose(clipped['b'], [[0.8], [0.4], [0]], rtol=1e-6)
  np.testing.assert_array_equal(weights, [2, 1, 0])


def test_nnm_by_hand_on_a_line():
  # f = 2 of 4 present: the mean of each point and its nearest other, ties
  # to the lower index (2 is as near to 0 as to 4 and takes 0).
  points = np.array([[0.0], [2.0], [4.0], [1e3], [100.0]])
  mixed, weights = apply(nnm(f=2), points, [1, 1, 1, 0, 1])
  np.testing.assert_allclose(mixed, [[1], [1], [3], [0], [52]])
  np.testing.assert_array_equal(weights, [1, 1, 1, 0, 1])
  # f = 1: the three nearest, the point itself included.
  mixed, _ = apply(nnm(f=1), np.array([[0.0], [1.0], [3.0], [10.0]]))
  np.testing.assert_allclose(mixed, [[4 / 3], [4 / 3], [4 / 3], [14 / 3]],
                             rtol=1e-6)


def test_arc_clips_the_largest_norms_by_hand():
  directions = np.random.default_rng(0).normal(size=(6, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  norms = np.array([3.0, 1.0, 100.0, 4.0, 2.0, 1e4])
  updates = directions * norms[:, None]
  weights = [1, 1, 1, 1, 1, 0]  # n = 5, the 1e4 update is absent
  # f = 1: k = floor(2 * 1 * 4 / 5) = 1 update clipped to the 4th smallest.
  clipped, out_weights = apply(arc(f=1), updates, weights)
  np.testing.assert_allclose(clipped[:5], updates[:5] * [[1], [1], [0.04],
                                                          [1], [1]], rtol=1e-6)
  np.testing.assert_array_equal(clipped[5], 0)
  np.testing.assert_array_equal(out_weights, weights)
  # f = 2: k = floor(2 * 2 * 3 / 5) = 2, clipped to the 3rd smallest norm.
  clipped, _ = apply(arc(f=2), updates, weights)
  np.testing.assert_allclose(np.linalg.norm(clipped[:5], axis=1),
                             [3, 1, 3, 3, 2], rtol=1e-6)
  # f = 0 clips nothing.
  clipped, _ = apply(arc(f=0), updates, weights)
  np.testing.assert_allclose(clipped[:5], updates[:5], rtol=1e-6)


def test_bucketing_averages_disjoint_groups_of_present_clients():
  # One-hot updates: bucket b's mean has 1/|b| at each of its members.
  weights = np.array([1, 0, 1, 1, 0, 1, 1])
  updates = np.eye(7) + np.where(weights == 0, 1e3, 0)[:, None]
  pre = bucketing(size=3)
  assert pre.num_outputs(7) == 3
  partitions = set()
  for seed in range(5):
    means, bucket_weights = apply(pre, updates, weights,
                                  jax.random.PRNGKey(seed))
    assert means.shape == (3, 7)
    members = means > 0
    np.testing.assert_array_equal(members.sum(axis=0), weights)
    np.testing.assert_array_equal(members.sum(axis=1), [3, 2, 0])
    np.testing.assert_allclose(means[members],
                               np.repeat([1 / 3, 1 / 2], [3, 2]))
    np.testing.assert_array_equal(bucket_weights, [1, 1, 0])
    partitions.add(members.tobytes())
  assert len(partitions) > 1  # the key shuffles


def test_bucketing_pairs_are_uniform_in_distribution():
  """4 clients in pairs: each of the 3 pairings has probability 1/3."""
  pre = bucketing(size=2)

  def partner_of_first(key):
    (means, _), _ = pre.update(jnp.eye(4), (), weights=jnp.ones(4), key=key)
    bucket = means[jnp.argmax(means[:, 0] > 0)]
    return jnp.argmax(bucket.at[0].set(0) > 0)

  partners = np.asarray(jax.jit(jax.vmap(partner_of_first))(
      jax.random.split(KEY, 600)))
  counts = np.bincount(partners, minlength=4)[1:]
  assert counts.sum() == 600 and np.all(np.abs(counts - 200) < 50), counts


def test_chain_clip_nnm_mean_by_hand():
  # clip(5): [0, 1, 3, 5]; nnm(f=1) averages 3 neighbours: 4/3, 4/3,
  # (3 + 1 + 5)/3 = 3 (1 and 5 tie at distance 2), (5 + 3 + 1)/3 = 3;
  # the mean of those is 13/6.
  updates = jnp.array([[0.0], [1.0], [3.0], [10.0]])

  def aggregate(rule):
    return jax.jit(lambda u: rule.update(u, rule.init(None),
                                         weights=jnp.ones(4), key=KEY))(updates)

  result, state = aggregate(chain(clip(max_norm=5.0), nnm(f=1), mean()))
  np.testing.assert_allclose(result, [13 / 6], rtol=1e-6)
  assert state == ((), (), ())
  # Full buckets of present clients keep the overall mean.
  result, _ = aggregate(chain(bucketing(size=2), mean()))
  np.testing.assert_allclose(result, [3.5], rtol=1e-6)


def _random_stack(rng, clients):
  return {'w': rng.normal(size=(clients, 3, 2)) * rng.uniform(0.1, 10, size=(
      clients, 1, 1)), 'b': rng.normal(size=(clients, 4))}


@pytest.mark.parametrize('pre', ROW_BY_ROW.values(), ids=ROW_BY_ROW)
def test_client_order_permutes_the_output(pre):
  rng = np.random.default_rng(1)
  updates = _random_stack(rng, 8)
  weights = np.array([1, 2, 0, 1, 1, 3, 0, 1])
  permutation = rng.permutation(8)
  expected, _ = apply(pre, updates, weights)
  got, _ = apply(pre, jax.tree.map(lambda u: u[permutation], updates),
                 weights[permutation])
  assert_trees_close(got, jax.tree.map(lambda u: u[permutation], expected))


@pytest.mark.parametrize('pre', ROW_BY_ROW.values(), ids=ROW_BY_ROW)
def test_absent_clients_are_ignored(pre):
  rng = np.random.default_rng(2)
  updates = _random_stack(rng, 8)
  weights = np.array([1, 1, 0, 1, 1, 1, 0, 1])
  garbage = jax.tree.map(lambda u: np.where(
      (weights == 0).reshape((-1,) + (1,) * (u.ndim - 1)), 1e6, u), updates)
  got, got_weights = apply(pre, garbage, weights)
  present = weights > 0
  expected, _ = apply(pre, jax.tree.map(lambda u: u[present], updates))
  assert_trees_close(jax.tree.map(lambda u: u[present], got), expected)
  assert all(np.all(u[~present] == 0) for u in jax.tree.leaves(got))
  np.testing.assert_array_equal(got_weights, weights)


@pytest.mark.parametrize('pre', PRE.values(), ids=PRE)
def test_jit_and_sharded_match_eager(pre):
  rng = np.random.default_rng(3)
  updates = jax.tree.map(lambda u: jnp.asarray(u, jnp.float32),
                         _random_stack(rng, 16))
  weights = jnp.asarray(rng.integers(0, 3, size=16), jnp.float32)
  transform = lambda u, w: pre.update(u, (), weights=w, key=KEY)[0]
  eager = transform(updates, weights)
  assert_trees_close(jax.jit(transform)(updates, weights), eager)
  mesh = make_mesh()
  sharded = jax.device_put((updates, weights),
                           NamedSharding(mesh, P('clients')))
  assert_trees_close(jax.jit(transform)(*sharded), eager)


@pytest.mark.parametrize('build, message', [
    (lambda: clip(max_norm=0.0), 'max_norm'),
    (lambda: nnm(f=-1), 'f'),
    (lambda: nnm(f=2, num_clients=2), 'num_clients > f'),
    (lambda: arc(f=-1), 'f'),
    (lambda: arc(f=3, num_clients=3), 'num_clients > f'),
    (lambda: bucketing(size=0), 'size'),
    (lambda: bucketing(size=1.5), 'size'),
])
def test_refuses_impossible_parameters(build, message):
  with pytest.raises(ValueError, match=message):
    build()
