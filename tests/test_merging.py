"""Model-merging rules (Fisher merging, variance-corrected averaging, FedLD)
and the client-side Fisher and margin term: hand-computed cases, NumPy
references, reductions to averaging, absent clients, permutations, jit,
vmap and a client-sharded stack."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators import AGGREGATORS, merging
from fedround.fisher import diagonal_fisher
from fedround.losses import margin_loss
from fedround.rounds import make_mesh
from fedround.aggregators.base import RoundContext
from fedround.client import ClientOutput

NUM_CLIENTS = 16
# Every registered rule of aggregators/merging.py.
RULES = [name for name in AGGREGATORS.names()
         if AGGREGATORS.get(name, 'aggregator').__module__ == merging.__name__]


@functools.cache
def build(name, **hyper):
  return getattr(merging, name)(**hyper)


def aggregate(rule, updates, weights=None, params=None, **extra):
  """The jitted rule's aggregate as NumPy arrays."""
  updates = jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), updates)
  if weights is None:
    weights = np.ones(len(jax.tree.leaves(updates)[0]))
  if params is None:
    params = jax.tree.map(lambda u: jnp.zeros(u.shape[1:]), updates)
  extra = jax.tree.map(jnp.asarray, extra)
  out = _jitted(rule)(updates, jnp.asarray(weights, jnp.float32), params,
                      extra)
  return jax.tree.map(np.asarray, out)


@functools.cache
def _jitted(rule):
  return jax.jit(lambda u, w, p, extra: rule.update(
      u, rule.init(p), p, weights=w, key=None,
      context=RoundContext(**extra))[0])


def extras(name, updates, seed=1, round=3):
  """The keywords ``name`` reads besides the stack."""
  if name == 'fisher_merging':
    rng = np.random.default_rng(seed)
    return {'fisher': jax.tree.map(
        lambda u: rng.uniform(0, 2, size=u.shape).astype(np.float32),
        updates)}
  if name == 'fedld':
    return {'round': round}
  return {}


def random_updates(num_clients=NUM_CLIENTS, seed=0):
  rng = np.random.default_rng(seed)
  return {'dense': {'kernel': rng.normal(size=(num_clients, 4, 3)),
                    'bias': rng.normal(size=(num_clients, 3))},
          'scale': rng.normal(size=(num_clients, 1))}


def random_params(seed=7):
  rng = np.random.default_rng(seed)
  return {'dense': {'kernel': jnp.asarray(rng.normal(size=(4, 3)),
                                          jnp.float32),
                    'bias': jnp.asarray(rng.normal(size=3), jnp.float32)},
          'scale': jnp.asarray(rng.normal(size=1), jnp.float32)}


def weighted_mean(updates, weights):
  w = np.asarray(weights, np.float64)
  return jax.tree.map(
      lambda u: np.tensordot(w / w.sum(), np.asarray(u, np.float64), 1),
      updates)


# Fisher-weighted merging.


def test_fisher_merging_two_clients_by_hand():
  # w = (1, 1, 1); deltas (1, 2, 3) and (3, 0, -3); n = (1, 3);
  # Fisher (1, 0, 2) and (1, 1, 0), floored at 1e-6:
  #   coordinate 0: (1*1*1 + 3*1*3) / (1*1 + 3*1) = 10 / 4
  #   coordinate 1: (1e-6*2 + 3*1*0) / (1e-6 + 3) = 6.7e-7, about 0
  #   coordinate 2: (1*2*3 + 3e-6*(-3)) / (2 + 3e-6), about 3
  params = jnp.ones(3)
  deltas = np.array([[1.0, 2, 3], [3, 0, -3]])
  fisher = np.array([[1.0, 0, 2], [1, 1, 0]])
  out = aggregate(build('fisher_merging'), deltas, [1, 3], params,
                  fisher=fisher)
  np.testing.assert_allclose(out, [2.5, 2e-6 / (3 + 1e-6),
                                   (6 - 9e-6) / (2 + 3e-6)], rtol=1e-6)
  # The same merge written on full models w_i = w + Delta_i.
  models = 1 + deltas
  floored = np.maximum(fisher, 1e-6) * np.array([[1.0], [3]])
  np.testing.assert_allclose(1 + out, (floored * models).sum(0) /
                             floored.sum(0), rtol=1e-6)


@pytest.mark.parametrize('fisher_value', [1.0, 0.0, 7.5])
def test_fisher_merging_with_constant_fisher_is_the_weighted_mean(
    fisher_value):
  # F_i = 1 is the definition's reduction; F = 0 falls to the floor, so
  # every client weighs alike again; any constant cancels.
  updates = random_updates(6)
  weights = [1, 2, 0, 5, 3, 1]
  fisher = jax.tree.map(lambda u: np.full(u.shape, fisher_value), updates)
  assert_trees_close(
      aggregate(build('fisher_merging'), updates, weights, random_params(),
                fisher=fisher),
      weighted_mean(updates, weights), atol=1e-5)


def test_fisher_merging_matches_numpy():
  updates, weights = random_updates(5), [1, 4, 2, 0, 3]
  fisher = extras('fisher_merging', updates)['fisher']
  floor = 0.3  # high enough to bite on the uniform(0, 2) Fisher

  def reference(u, f):
    lam = np.array(weights, np.float64).reshape((-1,) + (1,) * (u.ndim - 1))
    f = np.maximum(f, floor) * lam
    return (f * u).sum(0) / f.sum(0)

  assert_trees_close(
      aggregate(build('fisher_merging', floor=floor), updates, weights,
                fisher=fisher),
      jax.tree.map(reference, updates, fisher), atol=1e-5)


def test_fisher_merging_declares_what_it_needs():
  assert build('fisher_merging').reads.outputs == {ClientOutput.FISHER}


# Variance-corrected averaging.


def test_variance_correction_by_hand():
  # w: kernel (1, 1, 1), bias [0.5], running statistics (0, 0).
  # Full models: kernels (0, 2, 4) and (2, 2, 2), variances (ddof 1) 4 and
  # 0, target 2; their mean (1, 2, 3) has variance 1 and mean 2, so
  # W' = 2 + (-1, 0, 1) sqrt((2 + 1e-4) / (1 + 1e-4)).
  # The one-element bias and the statistics keep the plain mean.
  params = {'kernel': jnp.ones(3), 'bias': jnp.array([0.5]),
            'batch_stats': {'mean': jnp.zeros(2)}}
  models = {'kernel': np.array([[0.0, 2, 4], [2, 2, 2]]),
            'bias': np.array([[5.0], [1]]),
            'batch_stats': {'mean': np.array([[0.0, 4], [2, 0]])}}
  deltas = jax.tree.map(lambda m, w: m - np.asarray(w)[None], models, params)
  out = aggregate(build('variance_corrected'), deltas, [1, 1], params)
  scale = np.sqrt(2.0001 / 1.0001)
  np.testing.assert_allclose(1 + out['kernel'],
                             2 + np.array([-1, 0, 1]) * scale, rtol=1e-6)
  np.testing.assert_allclose(0.5 + out['bias'], [3], rtol=1e-6)
  np.testing.assert_allclose(out['batch_stats']['mean'], [1, 2], rtol=1e-6)
  # Absent slots, n_i and a third absent client change nothing.
  padded = jax.tree.map(lambda d: np.concatenate([d[:1], 9 + d[:1], d[1:]]),
                        deltas)
  assert_trees_close(aggregate(build('variance_corrected'), padded,
                               [2, 0, 7], params), out, atol=1e-6)


def test_variance_correction_rescales_biases_and_skips_statistics_by_path():
  # Uncorrelated clients: the mean has about 1/C of their variance, so a
  # 1-D bias is stretched back; PyTorch-named running statistics are not.
  rng = np.random.default_rng(0)
  params = {'bias': jnp.zeros(50), 'bn': {'running_var': jnp.zeros(50)}}
  deltas = {'bias': rng.normal(size=(8, 50)),
            'bn': {'running_var': rng.normal(size=(8, 50))}}
  out = aggregate(build('variance_corrected'), deltas, np.ones(8), params)
  target = np.mean(np.var(deltas['bias'], axis=1, ddof=1))
  np.testing.assert_allclose(np.var(out['bias'], ddof=1), target, rtol=2e-3)
  np.testing.assert_allclose(out['bn']['running_var'],
                             deltas['bn']['running_var'].mean(0), atol=1e-6)


def test_variance_correction_matches_numpy():
  updates, weights = random_updates(5), [1, 4, 0, 2, 3]
  params = random_params()
  present = np.array(weights) > 0

  def reference(u, w):
    models = (np.asarray(w, np.float64) + u)[present]
    mean = models.mean(0)
    if mean.size > 1:
      target = np.mean([np.var(m, ddof=1) for m in models])
      mean = (mean - mean.mean()) * np.sqrt(
          (target + 1e-4) / (np.var(mean, ddof=1) + 1e-4)) + mean.mean()
    return mean - w

  assert_trees_close(
      aggregate(build('variance_corrected'), updates, weights, params),
      jax.tree.map(reference, updates, params), atol=1e-5)


def test_variance_correction_of_identical_clients_is_the_mean():
  one = random_updates(1)
  updates = jax.tree.map(lambda u: np.repeat(u, 5, axis=0), one)
  assert_trees_close(
      aggregate(build('variance_corrected'), updates, [1, 3, 0, 2, 2],
                random_params()),
      jax.tree.map(lambda u: u[0], one), atol=1e-5)


def test_variance_correction_needs_the_global_model():
  rule = build('variance_corrected')
  with pytest.raises(ValueError, match='needs params'):
    rule.update(random_updates(3), (), weights=jnp.ones(3), key=None)


# FedLD.


def reference_fedld(updates, weights, keep=0.8):
  """ALGORITHMS.md's FedLD, literally, per leaf in float64 (d-space)."""
  present = np.asarray(weights) > 0
  n = int(present.sum())
  k = max(int(keep * n), 1)

  def leaf(u):
    g = np.asarray(u, np.float64).reshape(len(u), -1)[present]
    s, e = np.linalg.eigh(g @ g.T / n)
    s, e = np.maximum(s[::-1], 0), e[:, ::-1]
    revised = np.zeros_like(g)
    for j in range(k):
      v = g.T @ e[:, j]
      if s[j] <= 1e-9 * s[0]:
        continue
      if np.sum(g @ v >= 0) < np.sum(g @ v < 0):
        v = -v  # most clients have <g_i, v_j> >= 0
      for i in range(n):
        revised[i] += (s[j] / s.sum() * np.linalg.norm(g[i]) *
                       np.sign(g[i] @ v) * v / np.linalg.norm(v))
    return revised.mean(0).reshape(u.shape[1:])

  return jax.tree.map(leaf, updates)


def test_fedld_three_clients_by_hand():
  # g = (2, 0), (0, 1), (1, 1). G G^T / 3 has the nonzero eigenvalues of
  # G^T G / 3, G^T G = [[5, 1], [1, 2]]: lambda = (7 +- sqrt 13) / 2 (sum 7),
  # and v_j = G^T e_j is along G^T G's eigenvector (1, lambda - 5):
  #   u_1 along (1, 0.303): every <g_i, u_1> > 0;
  #   u_2 along (1, -3.303): signs (+, -, -), flipped to (-1, 3.303) so
  #   that most clients are >= 0.
  # k = int(0.8 * 3) = 2, g~_i = sum_j lambda_j / 7 ||g_i||
  # sign(<g_i, u_j>) u_j, and the aggregate is their mean.
  g = np.array([[2.0, 0], [0, 1], [1, 1]])
  lam = (7 + np.array([1, -1]) * np.sqrt(13)) / 2
  u = np.stack([np.array([1, l - 5]) / np.hypot(1, l - 5) for l in lam])
  u[1] *= -1  # the majority flip (it changes no g~_i)
  norms = np.array([2, 1, np.sqrt(2)])
  signs = np.array([[1, -1], [1, 1], [1, 1]])  # sign <g_i, u_j>, flipped
  np.testing.assert_array_equal(np.sign(g @ u.T), signs)
  expected = sum(lam[j] / 7 * norms[i] * signs[i, j] * u[j]
                 for i in range(3) for j in range(2)) / 3
  rule = build('fedld')
  np.testing.assert_allclose(aggregate(rule, g, round=1), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(reference_fedld(g, np.ones(3)), expected,
                             rtol=1e-12)
  # Round 0 is the plain mean, whatever the weights.
  np.testing.assert_allclose(aggregate(rule, g, [1, 5, 2], round=0),
                             [1, 2 / 3], rtol=1e-6)
  # keep = 0.5: k = int(1.5) = 1, only u_1: (lambda_1 / 7) (2 + 1 +
  # sqrt 2) / 3 u_1.
  np.testing.assert_allclose(
      aggregate(build('fedld', keep=0.5), g, round=1),
      lam[0] / 7 * (3 + np.sqrt(2)) / 3 * u[0], rtol=1e-5)


def test_fedld_orthogonal_clients_by_hand():
  # Orthogonal g = 3 e_1, 2 e_2, e_3: s = (9, 4, 1) / 3, v_j = g_j, k = 2;
  # client j only has a component along v_j, so g~_1 = 9/14 * 3 e_1,
  # g~_2 = 4/14 * 2 e_2, g~_3 = 0: the mean is (9/14, 4/21, 0).
  g = np.diag([3.0, 2, 1])
  np.testing.assert_allclose(aggregate(build('fedld'), g, round=5),
                             [9 / 14, 4 / 21, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('keep', [0.8, 0.5, 1.0])
def test_fedld_matches_numpy_reference(keep):
  updates = random_updates(7, seed=2)
  weights = [3, 0, 1, 1, 2, 0, 5]
  assert_trees_close(
      aggregate(build('fedld', keep=keep), updates, weights, round=2),
      reference_fedld(updates, weights, keep), atol=1e-5)


def test_fedld_round_zero_and_identical_clients_are_the_mean():
  updates = random_updates(5)
  weights = [1, 4, 0, 2, 3]
  mean = weighted_mean(updates, np.array(weights) > 0)
  assert_trees_close(aggregate(build('fedld'), updates, weights, round=0),
                     mean, atol=1e-6)
  # Identical clients: one direction, g~_i = g_i.
  same = jax.tree.map(lambda u: np.repeat(u[:1], 5, axis=0), updates)
  assert_trees_close(aggregate(build('fedld'), same, weights, round=4),
                     jax.tree.map(lambda u: u[0], same), atol=1e-5)


def test_fedld_lone_client_passes_unchanged():
  updates = random_updates()
  weights = np.zeros(NUM_CLIENTS)
  weights[6] = 2
  assert_trees_close(aggregate(build('fedld'), updates, weights, round=3),
                     jax.tree.map(lambda u: u[6], updates), atol=1e-5)


# Properties every rule owes.


@pytest.mark.parametrize('name', RULES)
def test_nobody_present_gives_zero(name):
  updates = random_updates()
  out = aggregate(build(name), updates, np.zeros(NUM_CLIENTS),
                  random_params(), **extras(name, updates))
  for leaf in jax.tree.leaves(out):
    np.testing.assert_array_equal(leaf, 0)


@pytest.mark.parametrize('garbage', [0.0, 1e9, np.nan])
@pytest.mark.parametrize('name', RULES)
def test_absent_clients_are_ignored(name, garbage):
  compact = random_updates(12)
  slots = np.array([0, 1, 3, 4, 5, 7, 8, 10, 11, 12, 14, 15])
  weights = np.zeros(NUM_CLIENTS)
  weights[slots] = np.random.default_rng(3).uniform(0.5, 10, size=12)
  extra = extras(name, compact)

  def pad(tree):
    def leaf(u):
      full = np.full((NUM_CLIENTS,) + u.shape[1:], garbage, np.float32)
      full[slots] = u
      return full
    return jax.tree.map(leaf, tree)

  padded_extra = ({'fisher': pad(extra['fisher'])} if 'fisher' in extra
                  else extra)
  params = random_params()
  assert_trees_close(
      aggregate(build(name), pad(compact), weights, params, **padded_extra),
      aggregate(build(name), compact, weights[slots], params, **extra),
      atol=1e-5)


@pytest.mark.parametrize('name', RULES)
def test_permuting_clients_changes_nothing(name):
  updates = random_updates(9)
  weights = np.array([1, 2, 0, 4, 1, 3, 2, 0, 5], np.float32)
  extra = extras(name, updates)
  perm = np.random.default_rng(5).permutation(9)
  shuffle = lambda tree: jax.tree.map(lambda u: np.asarray(u)[perm], tree)
  shuffled = {'fisher': shuffle(extra['fisher'])} if 'fisher' in extra else (
      extra)
  params = random_params()
  assert_trees_close(
      aggregate(build(name), shuffle(updates), weights[perm], params,
                **shuffled),
      aggregate(build(name), updates, weights, params, **extra), atol=1e-5)


@pytest.mark.parametrize('name', RULES)
def test_eager_and_vmapped_agree_with_jitted(name):
  stacks = [random_updates(seed=0), random_updates(seed=4)]
  weights = np.ones((2, NUM_CLIENTS), np.float32)
  weights[0, [2, 9]] = 0
  weights[1, 5] = 0
  params = random_params()
  extra = [extras(name, s, seed=i) for i, s in enumerate(stacks)]
  rule = build(name)
  batch = jax.tree.map(lambda *u: jnp.asarray(np.stack(u), jnp.float32),
                       *stacks)
  batch_extra = jax.tree.map(lambda *e: jnp.asarray(np.stack(e)), *extra)
  batched = jax.vmap(lambda u, w, e: rule.update(
      u, (), params, weights=w, key=None, context=RoundContext(**e))[0])(
          batch, jnp.asarray(weights), batch_extra)
  for i, updates in enumerate(stacks):
    assert_trees_close(jax.tree.map(lambda b: b[i], batched),
                       aggregate(rule, updates, weights[i], params,
                                 **extra[i]), atol=1e-5)


@pytest.mark.parametrize('name', RULES)
def test_client_sharded_stack_matches_unsharded(name):
  mesh = make_mesh()
  clients = NamedSharding(mesh, P('clients'))
  updates = random_updates()
  weights = np.ones(NUM_CLIENTS, np.float32)
  weights[5] = 0
  extra = extras(name, updates)
  params = random_params()
  sharded = jax.device_put(
      (jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), updates),
       jnp.asarray(weights)), clients)
  if 'fisher' in extra:
    extra = {'fisher': jax.device_put(
        jax.tree.map(jnp.asarray, extra['fisher']), clients)}
  assert_trees_close(aggregate(build(name), *sharded, params, **extra),
                     aggregate(build(name), updates, weights, params,
                               **extras(name, updates)), atol=1e-5)


@pytest.mark.parametrize('make, message', [
    (lambda: merging.fisher_merging(floor=0), 'floor'),
    (lambda: merging.fisher_merging(floor=-1e-6), 'must be > 0'),
    (lambda: merging.fedld(keep=0), r'keep .* must be in \(0, 1\]'),
    (lambda: merging.fedld(keep=1.5), r'got 1.5'),
])
def test_impossible_parameters_are_refused(make, message):
  with pytest.raises(ValueError, match=message):
    make()


# The client side: diagonal Fisher and FedLD's margin term.


def logistic(params, x):
  return x @ params['w'] + params['b']


def logistic_data(seed=0, n=11, d=3, classes=4):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(d, classes)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=classes), jnp.float32)}
  x = rng.normal(size=(n, d)).astype(np.float32)
  valid = np.ones(n, bool)
  valid[[2, 7, 10]] = False
  x[[2, 7]] = np.nan  # padding may hold anything
  return params, jnp.asarray(x), jnp.asarray(valid)


def brute_force_fisher(apply_fn, params, x, valid):
  """A loop over examples and classes with jax.grad, in float64 sums."""
  total = jax.tree.map(lambda p: np.zeros(p.shape), params)
  count = 0
  for example, keep in zip(np.asarray(x), np.asarray(valid)):
    if not keep:
      continue
    count += 1
    log_p = lambda p, y: jax.nn.log_softmax(apply_fn(p, example[None])[0])[y]
    probs = np.exp(np.asarray(log_p(params, slice(None)), np.float64))
    for y, prob in enumerate(probs):
      grad = jax.grad(log_p)(params, y)
      total = jax.tree.map(lambda t, g: t + prob * np.asarray(g) ** 2,
                           total, grad)
  return jax.tree.map(lambda t: t / count, total)


@pytest.mark.parametrize('chunk_size', [1, 3, 16])
def test_diagonal_fisher_matches_brute_force_and_closed_form(chunk_size):
  params, x, valid = logistic_data()
  fisher = jax.jit(lambda p, x, v: diagonal_fisher(
      logistic, p, x, v, chunk_size=chunk_size))(params, x, valid)
  assert_trees_close(fisher, brute_force_fisher(logistic, params, x, valid),
                     atol=1e-6, rtol=1e-4)
  # Logistic regression: grad_W log p(y|x) = x (e_y - p)^T, and
  # sum_y p_y (e_y - p)_c^2 = p_c (1 - p_c): F_W = mean x_a^2 p_c (1 - p_c),
  # F_b = mean p_c (1 - p_c).
  keep = np.asarray(valid)
  xs = np.asarray(x, np.float64)[keep]
  logits = xs @ np.asarray(params['w']) + np.asarray(params['b'])
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  spread = p * (1 - p)
  np.testing.assert_allclose(fisher['w'], (xs ** 2).T @ spread / len(xs),
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(fisher['b'], spread.mean(0), rtol=1e-4)


def test_diagonal_fisher_vmaps_over_clients_and_handles_empty_clients():
  clients = [logistic_data(seed) for seed in range(3)]
  params, x, valid = (jax.tree.map(lambda *a: jnp.stack(a), *parts)
                      for parts in zip(*clients))
  valid = valid.at[2].set(False)  # a client with no examples
  batched = jax.jit(jax.vmap(lambda p, x, v: diagonal_fisher(
      logistic, p, x, v)))(params, x, valid.astype(jnp.float32))
  for i in range(2):
    assert_trees_close(jax.tree.map(lambda b: b[i], batched),
                       diagonal_fisher(logistic, *clients[i]), atol=1e-7)
  for leaf in jax.tree.leaves(batched):
    np.testing.assert_array_equal(leaf[2], 0)


def test_diagonal_fisher_under_shard_map_matches_vmap():
  # As the round calls it: clients sharded over 8 devices, each device
  # vmapping its clients with device-varying params.
  mesh = make_mesh()
  params, x, valid = logistic_data()
  x = jnp.where(valid[:, None], x, 0)
  shifts = jnp.arange(16, dtype=jnp.float32)

  def one(p, shift):
    return diagonal_fisher(logistic, p, x + shift / 8, valid, chunk_size=4)

  def per_device(p, shift):
    p = jax.lax.pcast(p, 'clients', to='varying')
    return jax.vmap(one, in_axes=(None, 0))(p, shift)

  sharded = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P('clients')),
      out_specs=P('clients')))(params, shifts)
  assert_trees_close(sharded, jax.vmap(one, in_axes=(None, 0))(params, shifts),
                     atol=1e-7)


def test_diagonal_fisher_refuses_a_bad_chunk_size():
  params, x, valid = logistic_data()
  with pytest.raises(ValueError, match='chunk_size'):
    diagonal_fisher(logistic, params, x, valid, chunk_size=0)


def test_margin_loss_by_hand():
  # Equal logits over 4 classes: p = 1/4 each, so ||P||_F^2 over the two
  # valid rows is 2 * 4 / 16 = 1/2; a confident row adds about 1.
  logits = jnp.array([[0.0, 0, 0, 0], [1, 1, 1, 1], [jnp.nan] * 4,
                      [50, 0, 0, 0]])
  np.testing.assert_allclose(
      margin_loss(logits, jnp.array([1, 1, 0, 0])), 0.03 * np.log(1.5),
      rtol=1e-6)
  np.testing.assert_allclose(
      margin_loss(logits, jnp.array([True, True, False, True]), lam=0.1),
      0.1 * np.log(2.5), rtol=1e-6)
  np.testing.assert_allclose(margin_loss(logits, jnp.zeros(4)), 0)
