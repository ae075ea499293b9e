"""The Flag Aggregator (Almasi et al., ICLR 2024) against a direct d-space
reference, hand cases, invariances, absent clients, sharding and memory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators.flag import flag_aggregator
from fedround.rounds import make_mesh


def flag(updates, weights=None, **hyper):
  """The jitted rule's aggregate (compiled once per hyper-parameters)."""
  if weights is None:
    weights = np.ones(len(updates))
  aggregate = _jitted_rule(tuple(sorted(hyper.items())))
  return np.asarray(aggregate(jnp.asarray(updates, jnp.float32),
                              jnp.asarray(weights, jnp.float32)))


@functools.cache
def _jitted_rule(hyper):
  rule = flag_aggregator(**dict(hyper))
  return jax.jit(lambda u, w: rule.update(u, (), weights=w, key=None)[0])


def reference_flag(g, rank, iterations, lam, eps=1e-7):
  """The definition in d-space (float64): explicit SVDs of the weighted d x K
  matrix, from a Y orthogonal to every update, keeping a step only if the
  objective decreases."""
  x = (g / np.linalg.norm(g, axis=1, keepdims=True)).T  # d x C columns
  c = x.shape[1]
  y = np.linalg.svd(x, full_matrices=True)[0][:, c:c + rank]

  def sq_projection(y, v):
    return np.sum((y.T @ v) ** 2, axis=0)

  def objective(y):
    return np.sum(np.sqrt(np.maximum(0, 1 - sq_projection(y, x))))

  best = objective(y)
  for _ in range(iterations):
    columns = [(abs(1 - sq_projection(y, x[:, i])) + eps) ** -0.25 * x[:, i]
               for i in range(c)]
    if lam > 0:
      for i in range(c):
        for j in range(c):
          if i != j:
            pair = x[:, i] - x[:, j]
            columns.append((abs(1 - sq_projection(y, pair)) + eps) ** -0.25
                           * lam / (c * (c - 1)) * pair)
    candidate = np.linalg.svd(np.stack(columns, axis=1),
                              full_matrices=False)[0][:, :rank]
    if objective(candidate) < best:
      y, best = candidate, objective(candidate)
  return y @ (y.T @ x.sum(axis=1)) / rank


@pytest.mark.parametrize('rank', [1, 2])
@pytest.mark.parametrize('lam', [0.0, 10.0])
@pytest.mark.parametrize('iterations', [1, 3])
def test_matches_direct_reference(rank, lam, iterations):
  rng = np.random.default_rng(rank * 100 + int(lam) * 10 + iterations)
  for _ in range(3):
    g = rng.normal(size=(5, 7))
    np.testing.assert_allclose(
        flag(g, rank=rank, iterations=iterations, lam=lam),
        reference_flag(g, rank, iterations, lam), atol=1e-4, rtol=1e-4)


def test_regulariser_and_iterations_change_the_answer():
  g = np.random.default_rng(0).normal(size=(5, 7))
  one_step = flag(g, iterations=1)
  assert np.abs(flag(g, iterations=3) - one_step).max() > 1e-2
  assert np.abs(flag(g, iterations=1, lam=10.0) - one_step).max() > 1e-2


def test_hand_cases():
  u = np.array([3.0, -4.0, 0.0])
  equal = np.stack([u] * 4)
  # Every x_i = u/5 spans Y: (1/r) sum_i Y Y^T x_i = 4 u/5 / r.
  np.testing.assert_allclose(flag(equal), 4 * u / 5, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(flag(equal, rank=2, iterations=3), 2 * u / 5,
                             atol=1e-6)
  # Two updates along e1, one along e2: the first step's Y = e1 is exact for
  # two of three and later steps cannot improve it; rank 2 takes both axes.
  g = np.array([[3.0, 0, 0], [0.5, 0, 0], [0, 7.0, 0]])
  np.testing.assert_allclose(flag(g, iterations=3), [2, 0, 0], atol=1e-6)
  np.testing.assert_allclose(flag(g, rank=2, iterations=3), [1, 0.5, 0],
                             atol=1e-6)


def test_client_order_does_not_matter():
  rng = np.random.default_rng(1)
  g = rng.normal(size=(6, 10))
  weights = np.array([1.0, 2.0, 0.0, 1.0, 3.0, 1.0])
  permutation = rng.permutation(6)
  hyper = dict(rank=2, iterations=3, lam=1.0)
  permuted = flag(g[permutation], weights[permutation], **hyper)
  np.testing.assert_allclose(permuted, flag(g, weights, **hyper), atol=1e-5)


def test_output_ignores_update_scales():
  """Only the directions x_i = g_i/||g_i|| enter, and Y Y^T is linear."""
  rng = np.random.default_rng(2)
  g = rng.normal(size=(6, 10))
  hyper = dict(rank=2, iterations=3, lam=1.0)
  expected = flag(g, **hyper)
  for scale in (1e-3, 1e3):
    np.testing.assert_allclose(flag(scale * g, **hyper), expected, atol=1e-5)
  per_client = rng.uniform(0.01, 100, size=(6, 1))
  np.testing.assert_allclose(flag(per_client * g, **hyper), expected,
                             atol=1e-5)
  np.testing.assert_allclose(flag(-2 * g, **hyper), -expected, atol=1e-5)


def test_far_outlier_counts_as_one_unit_direction():
  rng = np.random.default_rng(3)
  honest_direction = rng.normal(size=50)
  honest_direction /= np.linalg.norm(honest_direction)
  g = honest_direction + 0.1 * rng.normal(size=(10, 50))
  attacked = g.copy()
  attacked[0] += 1e6 * rng.normal(size=50)
  clean, robust = flag(g, iterations=3), flag(attacked, iterations=3)
  cosine = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  # Each term Y Y^T x_i has norm <= 1: the output's norm is at most C / r.
  assert np.linalg.norm(robust) <= 10
  assert np.linalg.norm(robust - clean) < 0.15 * np.linalg.norm(clean)
  assert cosine(robust, clean) > 0.99
  assert cosine(attacked.mean(axis=0), honest_direction) < 0.2


def test_jit_and_sharded_match_eager():
  rng = np.random.default_rng(4)
  updates = {'w': jnp.asarray(rng.normal(size=(16, 4, 3)), jnp.float32),
             'b': jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)}
  weights = jnp.asarray(rng.integers(0, 3, size=16), jnp.float32)
  rule = flag_aggregator(rank=2, iterations=3, lam=1.0)
  assert rule.init(updates) == ()
  aggregate = lambda u, w: rule.update(u, (), weights=w, key=None)[0]
  eager = aggregate(updates, weights)
  assert_trees_close(jax.jit(aggregate)(updates, weights), eager)
  mesh = make_mesh()
  sharded = jax.device_put((updates, weights),
                           NamedSharding(mesh, P('clients')))
  assert_trees_close(jax.jit(aggregate)(*sharded), eager)


def test_absent_and_zero_updates_take_no_part():
  rng = np.random.default_rng(5)
  g = rng.normal(size=(4, 6))
  hyper = dict(rank=2, iterations=3, lam=1.0)
  expected = flag(g, **hyper)
  padded = np.concatenate([g, 1e3 * rng.normal(size=(2, 6)),
                           np.full((1, 6), np.nan), np.zeros((1, 6))])
  weights = [1, 1, 1, 1, 0, 0, 0, 1]  # the last one is present but zero
  np.testing.assert_allclose(flag(padded, weights, **hyper), expected,
                             atol=1e-5)
  np.testing.assert_array_equal(flag(padded, np.zeros(8), **hyper),
                                np.zeros(6))


@pytest.mark.parametrize('hyper, message', [
    (dict(rank=0), 'rank'),
    (dict(rank=3, num_clients=2), 'num_clients'),
    (dict(iterations=0), 'iterations'),
    (dict(lam=-1.0), 'lam'),
    (dict(eps=0.0), 'eps'),
])
def test_refuses_impossible_parameters(hyper, message):
  with pytest.raises(ValueError, match=message):
    flag_aggregator(**hyper)


def test_memory_stays_linear_in_the_model_size():
  clients, size = 8, 2**20
  rule = flag_aggregator(rank=2, iterations=3, lam=1.0)
  compiled = jax.jit(
      lambda u, w: rule.update(u, (), weights=w, key=None)[0]).lower(
          jax.ShapeDtypeStruct((clients, size), jnp.float32),
          jax.ShapeDtypeStruct((clients,), jnp.float32)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  # At most the stack with absent rows masked, never d x d or a few stacks.
  assert temp < 2 * clients * size * 4 < size * size * 4


def test_rescaled_flag_keeps_the_direction_at_the_median_norm():
  from fedround.aggregators.flag import flag_rescaled
  g = np.random.default_rng(3).normal(size=(5, 7)) * [[1], [2], [3], [4], [50]]
  weights = jnp.ones(5)
  direction = np.asarray(flag(g, rank=2, iterations=3))
  rescaled = np.asarray(flag_rescaled(rank=2, iterations=3).update(
      jnp.asarray(g, jnp.float32), (), weights=weights)[0])
  norms = np.linalg.norm(g, axis=1)
  np.testing.assert_allclose(np.linalg.norm(rescaled), np.median(norms),
                             rtol=1e-5)
  np.testing.assert_allclose(rescaled / np.linalg.norm(rescaled),
                             direction / np.linalg.norm(direction), atol=1e-5)
