"""Robust aggregation rules: hand-computed cases, NumPy references, and the
properties every rule owes (permutation invariance, translation
equivariance, absent clients ignored, bounded by the honest updates under
attack, jit, vmap and a client-sharded stack)."""
import functools
import inspect
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import assert_trees_close
from fedround.aggregators import AGGREGATORS, build_aggregator, robust
from fedround.registry import ConfigError
from fedround.rounds import make_mesh

ISSUE_CASE = np.array([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
LINE = np.array([[0.0], [1], [3], [7], [20]])
NUM_CLIENTS, F = 16, 3  # every rule is defined here, Bulyan needs >= 15


# The settings a rule is tested at besides f = F; the rules themselves come
# from the registry (every rule of aggregators/robust.py).
SETTINGS = {'centered_clipping': {'tau': 0.5}}
RULES = [name for name in AGGREGATORS.names()
         if AGGREGATORS.get(name, 'aggregator').__module__ == robust.__name__]


@functools.cache
def build(name, trusted=0):
  """The registered rule ``name`` at C = 16, f = 3 (``trusted`` is MoNNA's
  slot)."""
  factory = AGGREGATORS.get(name, 'aggregator')
  parameters = inspect.signature(factory).parameters
  kwargs = {**({'f': F} if 'f' in parameters else {}),
            **({'trusted': trusted} if 'trusted' in parameters else {}),
            **SETTINGS.get(name, {})}
  return factory(**kwargs)


def apply(rule, updates, weights=None, state=None):
  """The rule's aggregate of ``updates`` (and its new state)."""
  updates = jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), updates)
  template = jax.tree.map(lambda u: u[0], updates)
  if weights is None:
    weights = np.ones(len(jax.tree.leaves(updates)[0]))
  if state is None:
    state = rule.init(template)
  return _jitted(rule)(updates, state, jnp.asarray(weights, jnp.float32))


@functools.cache
def _jitted(rule):
  return jax.jit(lambda u, s, w: rule.update(u, s, weights=w, key=None))


def aggregate(rule, updates, weights=None, **kwargs):
  return jax.tree.map(np.asarray, apply(rule, updates, weights, **kwargs)[0])


def random_updates(num_clients=NUM_CLIENTS, seed=0):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=(num_clients, 3, 2)).astype(np.float32),
          'b': rng.normal(size=(num_clients, 2)).astype(np.float32)}


def flat(updates):
  """[C, d] NumPy matrix of a stacked pytree (leaves in tree order)."""
  return np.concatenate([np.asarray(u, np.float64).reshape(len(u), -1)
                         for u in jax.tree.leaves(updates)], axis=1)


def unflat(vector, like):
  """A single update shaped like one client of ``like``."""
  out, start = [], 0
  leaves, tree = jax.tree.flatten(like)
  for leaf in leaves:
    size = int(np.prod(leaf.shape[1:]))
    out.append(np.reshape(vector[start:start + size], leaf.shape[1:]))
    start += size
  return jax.tree.unflatten(tree, out)


# Hand-computed cases.


def test_issue_case_coordinate_rules():
  # Columns (1, 4, 7), (2, 5, 8), (3, 6, 9): the median is the middle row.
  np.testing.assert_allclose(aggregate(robust.median(), ISSUE_CASE), [4, 5, 6])
  # f = 1 drops the lowest and highest of each column: the middle row again.
  np.testing.assert_allclose(aggregate(robust.trimmed_mean(1), ISSUE_CASE),
                             [4, 5, 6])
  # Meamed f = 1 keeps the 2 values closest to the median 4 of (1, 4, 7):
  # 4 (gap 0), then 1 and 7 tie at gap 3 and the lower index (1) wins:
  # (1 + 4) / 2 = 2.5, and likewise 3.5 and 4.5.
  np.testing.assert_allclose(aggregate(robust.meamed(1), ISSUE_CASE),
                             [2.5, 3.5, 4.5])


def test_issue_case_distance_rules():
  # Squared distances: |r0 - r1|^2 = |r1 - r2|^2 = 3 * 9 = 27,
  # |r0 - r2|^2 = 3 * 36 = 108.
  # GM: the points are collinear, so the middle row is the median; the
  # start (the mean) is exactly that row and Weiszfeld keeps it.
  np.testing.assert_allclose(aggregate(robust.geometric_median(), ISSUE_CASE),
                             [4, 5, 6], atol=1e-4)
  # MDA f = 1: pairs {0,1} (27), {0,2} (108), {1,2} (27); {0,1} and {1,2}
  # tie in diameter and in spread, and the lexicographically first wins:
  # (r0 + r1) / 2.
  np.testing.assert_allclose(aggregate(robust.mda(1), ISSUE_CASE),
                             [2.5, 3.5, 4.5], atol=1e-4)
  # MoNNA f = 1: the 2 nearest to the trusted row, itself included.
  np.testing.assert_allclose(aggregate(robust.monna(1), ISSUE_CASE),
                             [2.5, 3.5, 4.5], atol=1e-4)  # r0 and r1
  np.testing.assert_allclose(aggregate(robust.monna(1, trusted=2),
                                       ISSUE_CASE), [5.5, 6.5, 7.5],
                             atol=1e-4)  # r2 and r1


def test_coordinate_rules_on_a_line():
  # Column 0 is (0, 1, 3, 7, 20), column 1 the same values reversed, so
  # every rule gives the same value in both columns.
  updates = np.concatenate([LINE, LINE[::-1]], axis=1)
  # Trimmed mean: f = 1 -> (1 + 3 + 7) / 3; f = 2 -> 3 alone.
  np.testing.assert_allclose(aggregate(robust.trimmed_mean(1), updates),
                             [11 / 3] * 2, rtol=1e-6)
  np.testing.assert_allclose(aggregate(robust.trimmed_mean(2), updates),
                             [3, 3])
  # Meamed: gaps to the median 3 are (3, 2, 0, 4, 17); f = 1 keeps 4 values,
  # (3 + 1 + 0 + 7) / 4 = 2.75; f = 2 keeps 3: (3 + 1 + 0) / 3.
  np.testing.assert_allclose(aggregate(robust.meamed(1), updates),
                             [2.75] * 2, rtol=1e-6)
  np.testing.assert_allclose(aggregate(robust.meamed(2), updates),
                             [4 / 3] * 2, rtol=1e-6)
  # Degraded: f = 3 with n = 5 trims min(3, (5 - 1) // 2) = 2 -> the median;
  # meamed keeps n - 2 = 3 values as for f = 2.
  np.testing.assert_allclose(aggregate(robust.trimmed_mean(3), updates),
                             [3, 3])
  np.testing.assert_allclose(aggregate(robust.meamed(3), updates),
                             [4 / 3] * 2, rtol=1e-6)


def test_krum_and_multi_krum_by_hand():
  # Points t * (0.6, 0.8) on a line (so distances are |t_i - t_j|) plus a
  # constant leaf 'b' that adds no distance. f = 1, C = 6: each score sums
  # the squared distances to the C - f - 2 = 3 nearest others:
  #   t=0: 1 + 4 + 16 = 21     t=1: 1 + 1 + 9 = 11    t=2: 1 + 4 + 4 = 9
  #   t=4: 4 + 9 + 16 = 29     t=10: 36 + 64 + 81 = 181
  #   t=30: 400 + 676 + 784 = 1860
  t = np.array([0.0, 1, 2, 4, 10, 30])
  updates = {'w': t[:, None] * [0.6, 0.8], 'b': np.full((6, 1), 5.0)}
  expected = lambda value: {'w': value * np.array([0.6, 0.8]), 'b': [5.0]}
  assert_trees_close(aggregate(robust.krum(1), updates), expected(2),
                     atol=1e-4)
  # Multi-Krum, m = C - f = 5: all but t=30: (0 + 1 + 2 + 4 + 10) / 5 = 3.4.
  assert_trees_close(aggregate(robust.multi_krum(1), updates), expected(3.4),
                     atol=1e-4)
  # m = 3: scores 9, 11, 21 -> t = 2, 1, 0, mean 1.
  assert_trees_close(aggregate(robust.multi_krum(1, m=3), updates),
                     expected(1), atol=1e-4)


def test_bulyan_by_hand():
  # C = 7, f = 1: theta = 5 picks by Krum with n' - f - 2 neighbours
  # (k clipped to >= 1), then the beta = 3 values nearest the median.
  #   n'=7, k=4: 0:1+4+9+36=50  1:1+1+4+25=31  2:1+1+4+16=22
  #              3:1+4+9+9=23  6:4+9+16+25=54  8:4+25+36+49=114 -> 2
  #   n'=6, k=3: 0:1+9+36=46  1:1+4+25=30  3:4+9+9=22  6:4+9+25=38 -> 3
  #   n'=5, k=2: 0:1+36=37  1:1+25=26  6:4+25=29  8:4+49=53 -> 1
  #   n'=4, k=1: 0:36  6:4  8:4 (tie, lower index) -> 6
  #   n'=3, k=1: 0:64  8:64 (tie, lower index) -> 0
  # Selected (0, 1, 2, 3, 6): median 2, nearest three 2, 1, 3 -> mean 2.
  # (Had either tie gone the other way the result would still be 2.)
  updates = np.array([[0.0], [1], [2], [3], [6], [8], [100]])
  np.testing.assert_allclose(aggregate(robust.bulyan(1), updates), [2],
                             atol=1e-4)


def test_mda_by_hand_with_an_absent_client():
  rule = robust.mda(1)
  # f = 1 of (0, 1, 3, 7, 20): the 4-subset {0, 1, 3, 7} has the smallest
  # diameter (7^2 = 49 against >= 20^2 for any subset with 20): 11 / 4.
  np.testing.assert_allclose(aggregate(rule, LINE), [2.75], atol=1e-4)
  # Client 0 absent: 3-subsets of (1, 3, 7, 20); {1, 3, 7} (diameter 36).
  np.testing.assert_allclose(aggregate(rule, LINE, [0, 1, 1, 1, 1]),
                             [11 / 3], atol=1e-4)
  # n = 1 <= f = 2: the lone present update.
  np.testing.assert_allclose(aggregate(robust.mda(2), LINE, [0, 0, 0, 1, 0]),
                             [7], atol=1e-4)


def test_monna_by_hand():
  # f = 2, trusted 7: the 3 nearest are 7 (0), 3 (4), 1 (6): (7 + 3 + 1) / 3.
  np.testing.assert_allclose(aggregate(robust.monna(2, trusted=3), LINE),
                             [11 / 3], rtol=1e-6)
  # The trusted slot 0 is absent: the first present client (value 1)
  # stands in; n = 4, so its 2 nearest: 1 itself and 3.
  np.testing.assert_allclose(
      aggregate(robust.monna(2, trusted=0), LINE, [0, 1, 1, 1, 1]), [2],
      rtol=1e-6)


def test_smallest_norms_mean_by_hand():
  """Norms 3, 1, 2, 0.5 (the last absent): k = 2 keeps rows 1 and 2; the
  default (half the present, rounded up) keeps 2 of 3, then 2 of 4; k
  beyond the present keeps them all."""
  updates = {'w': jnp.array([[3.0, 0], [1, 0], [0, 2], [0.5, 0]])}
  absent_last = jnp.array([1.0, 1, 1, 0])
  rule = lambda **hyper: build_aggregator(
      'smallest_norms' + (f'(k={hyper["k"]})' if hyper else ''),
      num_clients=4)
  mean = lambda rule, w: np.asarray(rule.update(updates, (), weights=w)[0]['w'])
  np.testing.assert_allclose(mean(rule(k=2), absent_last), [0.5, 1])
  np.testing.assert_allclose(mean(rule(), absent_last), [0.5, 1])
  np.testing.assert_allclose(mean(rule(), jnp.ones(4)), [0.75, 0])
  np.testing.assert_allclose(mean(rule(k=4), absent_last), [4 / 3, 2 / 3],
                             rtol=1e-6)
  for spec, message in (('smallest_norms(k=0)', 'integer >= 1'),
                        ('smallest_norms(k=5)', 'more updates than the 4')):
    with pytest.raises(ConfigError, match=re.escape(message)):
      build_aggregator(spec, num_clients=4)


def test_geometric_median_of_symmetric_points():
  # The vertices of an equilateral triangle: the centroid is the GM.
  angles = 2 * np.pi * np.arange(3) / 3
  triangle = np.stack([np.cos(angles), np.sin(angles)], axis=1) + [2.0, -1.0]
  np.testing.assert_allclose(aggregate(robust.geometric_median(), triangle),
                             [2, -1], atol=1e-4)
  # A fourth point 1e3 away: the GM stays in the triangle (radius 1 around
  # the centroid), while the mean moves 250 away. From the mean each
  # Weiszfeld step shrinks the distance by about f / (n - f) = 1/3, hence
  # 32 iterations.
  outlier = np.concatenate([triangle, [[1e3, 0.0]]])
  gm = aggregate(robust.geometric_median(iterations=32), outlier)
  assert np.linalg.norm(gm - [2, -1]) < 1


def numpy_weiszfeld(points, iterations, nu):
  z = points.mean(axis=0)
  for _ in range(iterations):
    inverse = 1 / np.maximum(np.linalg.norm(points - z, axis=1), nu)
    z = inverse @ points / inverse.sum()
  return z


def test_geometric_median_matches_numpy_weiszfeld():
  updates = random_updates(7)
  weights = np.array([1, 0, 1, 1, 1, 1, 0])
  expected = numpy_weiszfeld(flat(updates)[weights > 0], 5, 1e-6)
  assert_trees_close(
      aggregate(robust.geometric_median(iterations=5), updates, weights),
      unflat(expected, updates), atol=1e-4)


def numpy_centered_clipping(points, start, tau, iterations):
  v = start
  for _ in range(iterations):
    gaps = points - v
    norms = np.linalg.norm(gaps, axis=1, keepdims=True)
    v = v + np.mean(gaps * np.minimum(1, tau / norms), axis=0)
  return v


def test_centered_clipping_by_hand_and_state_carries_over():
  # One iteration from v = 0, tau = 5: the norms are sqrt(14) < 5 (kept),
  # sqrt(77) and sqrt(194) (scaled to 5):
  # v = (r0 + 5/sqrt(77) r1 + 5/sqrt(194) r2) / 3 ~ (1.931, 2.574, 3.217).
  rule = robust.centered_clipping(tau=5.0, iterations=1)
  rows = ISSUE_CASE  # r0, r1, r2
  first, state = apply(rule, rows)
  expected = (rows[0] + 5 / np.sqrt(77) * rows[1]
              + 5 / np.sqrt(194) * rows[2]) / 3
  np.testing.assert_allclose(first, expected, rtol=1e-5)
  np.testing.assert_allclose(state, expected, rtol=1e-5)
  # The next round starts from the previous aggregate.
  second, state = apply(rule, rows, state=state)
  np.testing.assert_allclose(
      second, numpy_centered_clipping(rows, expected, 5.0, 1), rtol=1e-5)
  np.testing.assert_allclose(state, second)
  # With nobody present the aggregate is zero and the state is kept.
  nothing, kept = apply(rule, rows, [0, 0, 0], state=state)
  np.testing.assert_array_equal(nothing, 0)
  np.testing.assert_allclose(kept, second)


def test_centered_clipping_matches_numpy():
  updates = random_updates(6)
  weights = np.array([1, 1, 0, 1, 1, 1])
  start = jax.tree.map(lambda u: u[0] * 0.5, random_updates(1, seed=1))
  rule = robust.centered_clipping(tau=0.7, iterations=4)
  expected = numpy_centered_clipping(flat(updates)[weights > 0],
                                     flat(jax.tree.map(lambda s: s[None],
                                                       start))[0], 0.7, 4)
  out, state = apply(rule, updates, weights, state=start)
  assert_trees_close(out, unflat(expected, updates), atol=1e-5)
  assert_trees_close(state, out)
  assert_trees_close(rule.init(start), jax.tree.map(np.zeros_like, start))


def numpy_krum_scores(distances, f):
  n = len(distances)
  k = max(n - f - 2, 1)
  return np.array([np.sort(np.delete(distances[i], i))[:k].sum()
                   for i in range(n)])


def test_krum_family_and_mda_match_numpy_on_random_updates():
  # The rules at C = 16, f = 3 against direct NumPy, distances in float64.
  updates = random_updates()
  points = flat(updates)
  distances = ((points[:, None] - points[None]) ** 2).sum(-1)
  scores = numpy_krum_scores(distances, F)
  assert_trees_close(aggregate(build('krum'), updates),
                     unflat(points[np.argmin(scores)], updates), atol=1e-5)
  best = np.argsort(scores)[:NUM_CLIENTS - F]
  assert_trees_close(aggregate(build('multi_krum'), updates),
                     unflat(points[best].mean(0), updates), atol=1e-5)
  # Bulyan: theta = 10 picks of Krum on the remaining set, then per
  # coordinate the beta = 4 values nearest the median of the picks.
  remaining, picks = list(range(NUM_CLIENTS)), []
  for _ in range(NUM_CLIENTS - 2 * F):
    subset = np.ix_(remaining, remaining)
    winner = remaining[np.argmin(numpy_krum_scores(distances[subset], F))]
    picks.append(winner)
    remaining.remove(winner)
  chosen = points[picks]
  order = np.argsort(np.abs(chosen - np.median(chosen, axis=0)), axis=0)
  expected = np.take_along_axis(chosen, order, axis=0)[:4].mean(0)
  assert_trees_close(aggregate(build('bulyan'), updates),
                     unflat(expected, updates), atol=1e-5)
  # MDA: the 13-subset of smallest diameter, ties to the least spread.
  def diameter_and_spread(subset):
    pairs = distances[np.ix_(subset, subset)]
    return pairs.max(), pairs.sum()
  subset = min(itertools.combinations(range(NUM_CLIENTS), NUM_CLIENTS - F),
               key=diameter_and_spread)
  assert_trees_close(aggregate(build('mda'), updates),
                     unflat(points[list(subset)].mean(0), updates),
                     atol=1e-5)


# Properties of every rule.


@pytest.mark.parametrize('name', RULES)
def test_permuting_clients_permutes_nothing(name):
  # Random data has no ties in Krum scores, so the index tie-breaks never
  # act (f = 3 keeps Bulyan's last Krum pick at k = 2 neighbours: with
  # k = 1 the closest pair always ties); MDA's many diameter ties are
  # broken by spread, not index. MoNNA's trusted slot follows its client.
  updates = random_updates()
  permutation = np.random.default_rng(1).permutation(NUM_CLIENTS)
  permuted = jax.tree.map(lambda u: u[permutation], updates)
  trusted = int(np.argmax(permutation == 0))
  assert_trees_close(aggregate(build(name, trusted), permuted),
                     aggregate(build(name), updates), atol=1e-4)


@pytest.mark.parametrize('name', RULES)
def test_translation_equivariance(name):
  updates = random_updates()
  shift = jax.tree.map(lambda u: u[0] * 3 + 5, random_updates(1, seed=2))
  moved = jax.tree.map(lambda u, s: u + s[None], updates, shift)
  rule = build(name)
  state = rule.init(shift)
  if name == 'centered_clipping':
    # Clipping is around the previous aggregate, so it moves too.
    moved_state = shift
  else:
    moved_state = state
  assert_trees_close(
      aggregate(rule, moved, state=moved_state),
      jax.tree.map(lambda a, s: a + s, aggregate(rule, updates, state=state),
                   shift), atol=1e-4)


def test_trimmed_mean_without_trimming_is_the_mean():
  updates = random_updates()
  assert_trees_close(aggregate(robust.trimmed_mean(0), updates),
                     jax.tree.map(lambda u: u.mean(0), updates), atol=1e-6)


# Rules that keep their output in the coordinate-wise box of the honest
# updates when f updates sit 1e6 away:
# - median, trimmed mean, meamed: per coordinate the kept values are
#   honest or lie between honest ones (f < n / 2);
# - Krum, Multi-Krum, Bulyan, MDA: the far updates have the worst scores /
#   largest diameters, so only honest updates are selected;
# - MoNNA with an honest trusted client: its n - f nearest are the honest;
# - GM: pulled towards the outliers by about f / (n - f) of the honest
#   spread, which stays inside the box here but is no general guarantee;
#   starting from the mean (1.9e5 away) it needs more iterations;
# - centered clipping: each step moves at most tau, so started at the
#   honest mean with a small tau it cannot leave the box in 3 steps.
BOUNDED_OVERRIDES = {
    'geometric_median': robust.geometric_median(iterations=32),
    'centered_clipping': robust.centered_clipping(tau=0.1, iterations=3),
}


@pytest.mark.parametrize('name', RULES)
def test_far_outliers_leave_the_aggregate_in_the_honest_box(name):
  updates = random_updates()
  byzantine = np.arange(NUM_CLIENTS) >= NUM_CLIENTS - F  # trusted 0 honest
  attacked = jax.tree.map(lambda u: np.where(
      byzantine.reshape((-1,) + (1,) * (u.ndim - 1)), u + 1e6, u), updates)
  rule = BOUNDED_OVERRIDES.get(name) or build(name)
  honest = jax.tree.map(lambda u: u[~byzantine], updates)
  state = jax.tree.map(lambda u: u.mean(0), honest)
  out = aggregate(rule, attacked, state=state if name == 'centered_clipping'
                  else None)
  for value, values in zip(jax.tree.leaves(out), jax.tree.leaves(honest)):
    assert np.all(value >= values.min(0) - 1e-4), name
    assert np.all(value <= values.max(0) + 1e-4), name


@pytest.mark.parametrize('garbage', [0.0, 1e9, np.nan])
@pytest.mark.parametrize('name', RULES)
def test_absent_clients_are_ignored(name, garbage):
  # 12 present clients, with arbitrary positive weights (robust rules
  # ignore their size), spread over 16 slots; absent rows hold `garbage`.
  # Slot 0 stays present, so MoNNA trusts the same client in both stacks.
  compact = random_updates(12)
  slots = np.array([0, 1, 3, 4, 5, 7, 8, 10, 11, 12, 14, 15])
  weights = np.zeros(NUM_CLIENTS)
  weights[slots] = np.random.default_rng(3).uniform(0.5, 10, size=12)
  padded = jax.tree.map(
      lambda u: np.full((NUM_CLIENTS,) + u.shape[1:], garbage,
                        np.float32), compact)
  for full, few in zip(jax.tree.leaves(padded), jax.tree.leaves(compact)):
    full[slots] = few
  assert_trees_close(aggregate(build(name), padded, weights),
                     aggregate(build(name), compact), atol=1e-4)


@pytest.mark.parametrize('name', RULES)
def test_nobody_or_too_few_present(name):
  updates = random_updates()
  rule = build(name)
  out = aggregate(rule, updates, np.zeros(NUM_CLIENTS))
  for leaf in jax.tree.leaves(out):
    np.testing.assert_array_equal(leaf, 0)
  for count in (1, 2, 3, 5):
    weights = np.zeros(NUM_CLIENTS)
    weights[4:4 + count] = 1
    out = aggregate(rule, updates, weights)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(out))
    if count == 1 and name != 'centered_clipping':
      # A lone update is every rule's answer but clipping's (it moves at
      # most tau per step from the previous aggregate).
      assert_trees_close(out, jax.tree.map(lambda u: u[4], updates),
                         atol=1e-5)


@pytest.mark.parametrize('name', RULES)
def test_eager_and_vmapped_agree_with_jitted(name):
  # One eager (unjitted) run of the rule vmapped over two stacks with
  # different present clients, against the jitted rule on each stack: it
  # checks both at once, without compiling a vmapped program per rule.
  stacks = [random_updates(seed=0), random_updates(seed=4)]
  weights = np.ones((2, NUM_CLIENTS), np.float32)
  weights[0, [2, 9]] = 0
  weights[1, 5] = 0
  rule = build(name)
  state = rule.init(jax.tree.map(lambda u: u[0], stacks[0]))
  batch = jax.tree.map(lambda *u: jnp.asarray(np.stack(u)), *stacks)
  batched = jax.vmap(
      lambda u, w: rule.update(u, state, weights=w, key=None)[0])(
          batch, jnp.asarray(weights))
  for i, updates in enumerate(stacks):
    assert_trees_close(jax.tree.map(lambda b: b[i], batched),
                       aggregate(rule, updates, weights[i]), atol=1e-5)


@pytest.mark.parametrize('name', RULES)
def test_client_sharded_stack_matches_unsharded(name):
  mesh = make_mesh()
  clients = NamedSharding(mesh, P('clients'))
  updates = random_updates()
  weights = np.ones(NUM_CLIENTS, np.float32)
  weights[5] = 0
  rule = build(name)
  sharded = jax.device_put(
      (jax.tree.map(jnp.asarray, updates), jnp.asarray(weights)), clients)
  assert_trees_close(aggregate(rule, *sharded),
                     aggregate(rule, updates, weights), atol=1e-5)


# Build-time refusals.


@pytest.mark.parametrize('make, message', [
    (lambda: robust.trimmed_mean(-1), 'integer >= 0'),
    (lambda: robust.trimmed_mean(1.5), 'integer >= 0'),
    (lambda: robust.trimmed_mean(2, num_clients=4), 'more than 2f'),
    (lambda: robust.meamed(2, num_clients=4), 'use f <= 1'),
    (lambda: robust.krum(2, num_clients=6), 'more than 2f + 2 clients: f=2 '
     'with 6 clients; use f <= 1'),
    (lambda: robust.krum(0, num_clients=2), 'use more clients'),
    (lambda: robust.multi_krum(1, num_clients=4), 'more than 2f + 2'),
    (lambda: robust.multi_krum(1, m=0), 'm (the number'),
    (lambda: robust.multi_krum(1, m=6, num_clients=6), 'm must be in 1..5'),
    (lambda: robust.bulyan(1, num_clients=6), 'at least 4f + 3'),
    (lambda: robust.mda(3, num_clients=3), 'more than f'),
    (lambda: robust.mda(5, num_clients=30),
     'C(30, 5) = 142506 subsets, more than max_subsets=100000'),
    (lambda: robust.mda(1, max_subsets=0), 'max_subsets'),
    (lambda: robust.monna(2, num_clients=2), 'more than f'),
    (lambda: robust.monna(1, trusted=4, num_clients=4), 'not a client slot'),
    (lambda: robust.monna(1, trusted=-1), 'trusted'),
    (lambda: robust.geometric_median(iterations=0), 'iterations'),
    (lambda: robust.geometric_median(nu=0.0), 'nu'),
    (lambda: robust.centered_clipping(tau=0.0), 'tau'),
    (lambda: robust.centered_clipping(iterations=2.0), 'iterations'),
])
def test_impossible_parameters_are_refused(make, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    make()


def test_sizes_known_only_when_traced_are_checked_then():
  with pytest.raises(ValueError, match='max_subsets=9'):
    aggregate(robust.mda(2, max_subsets=9), LINE)
  with pytest.raises(ValueError, match='not a client slot'):
    aggregate(robust.monna(1, trusted=5), LINE)
