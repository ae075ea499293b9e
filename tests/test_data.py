"""Embedded data sets, the Dirichlet partitioner and cohort sampling."""
import jax
import numpy as np
import pytest

from fedround.data import FederatedData, digits, synthetic, uniform
from fedround.data.partitions import dirichlet_label_skew
from fedround.data.synthetic import generate_synthetic
from fedround.registry import ConfigError


def _feature_shift_spread(xs):
  """Std over users of each user's mean feature value: the covariate shift."""
  return np.std([x.mean() for x in xs])


def _label_skew(ys):
  """Mean total-variation distance of users' label mixes from the pooled one."""
  pooled = np.bincount(np.concatenate(ys), minlength=10) / sum(map(len, ys))
  return np.mean([0.5 * np.abs(np.bincount(y, minlength=10) / len(y)
                               - pooled).sum() for y in ys])


def test_synthetic_matches_recipe():
  xs, ys = generate_synthetic(num_clients=100, alpha=0.5, beta=0.5, seed=3)
  sizes = np.array([len(x) for x in xs])
  assert sizes.min() >= 50
  assert len(np.unique(sizes)) > 50  # lognormal sizes, not constant
  assert all(x.shape[1] == 60 for x in xs)
  labels = np.concatenate(ys)
  assert labels.min() >= 0 and labels.max() <= 9
  assert len(np.unique(labels)) == 10
  # Within a user, feature j has variance j^-1.2 around the user's mean.
  big = xs[int(np.argmax(sizes))]
  np.testing.assert_allclose(big.var(0)[[0, 9, 59]],
                             np.array([1, 10, 60]) ** -1.2, rtol=0.35)
  again, _ = generate_synthetic(num_clients=100, alpha=0.5, beta=0.5, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(xs, again))


def test_synthetic_heterogeneity_grows_with_alpha_beta():
  spread, skew = {}, {}
  for setting in [(0, 0), (0.5, 0.5), (1, 1)]:
    spreads, skews = [], []
    for seed in range(3):
      xs, ys = generate_synthetic(100, *setting, seed=seed)
      spreads.append(_feature_shift_spread(xs))
      skews.append(_label_skew(ys))
    spread[setting], skew[setting] = np.mean(spreads), np.mean(skews)
  assert spread[(0, 0)] < spread[(0.5, 0.5)] < spread[(1, 1)]
  iid_xs, iid_ys = generate_synthetic(100, iid=True, seed=0)
  assert _label_skew(iid_ys) < 0.5 * skew[(0, 0)]
  assert _feature_shift_spread(iid_xs) < 0.5 * spread[(0, 0)]


def test_synthetic_federation_splits_each_user_90_10():
  data = synthetic(num_clients=20, seed=1)
  xs, _ = generate_synthetic(20, seed=1)
  np.testing.assert_array_equal(data.n, [int(0.9 * len(x)) for x in xs])
  assert len(data.test_y) == sum(len(x) - int(0.9 * len(x)) for x in xs)
  assert data.x.shape == (20, max(data.n), 60)
  # Padding is zero and masked.
  assert not np.asarray(data.x)[~data.mask].any()


@pytest.mark.parametrize('alpha', [0.05, 0.5, 100.0])
def test_dirichlet_partition_is_a_partition(alpha):
  y = np.random.default_rng(0).integers(0, 7, 2000)
  parts = dirichlet_label_skew(y, 25, alpha, seed=1, min_size=10)
  everything = np.concatenate(parts)
  assert len(everything) == len(y)
  assert len(np.unique(everything)) == len(y)
  assert min(len(p) for p in parts) >= 10


def test_dirichlet_skew_follows_alpha():
  y = np.random.default_rng(0).integers(0, 10, 5000)
  skew = {a: _label_skew([y[p] for p in dirichlet_label_skew(y, 20, a)])
          for a in (0.1, 1.0, 100.0)}
  assert skew[0.1] > skew[1.0] > skew[100.0]


def test_dirichlet_impossible_request_is_explained():
  with pytest.raises(ValueError, match='cannot give 50 clients'):
    dirichlet_label_skew(np.zeros(100, int), 50, 0.5, min_size=10)
  with pytest.raises(ValueError, match='alpha must be > 0'):
    dirichlet_label_skew(np.zeros(100, int), 5, 0.0)


def test_digits_federation():
  data = digits(num_clients=30, alpha=0.3, seed=0)
  assert data.x.shape[2:] == (8, 8, 1)
  assert int(np.sum(data.n)) + len(data.test_y) == 1797
  assert 0.0 <= float(np.max(data.x)) <= 1.0
  assert isinstance(data, FederatedData) and data.num_classes == 10


def test_uniform_cohort_has_no_repeats():
  participation = uniform(num_clients=50, cohort_size=20)
  for seed in range(5):
    ids, present, _ = participation.sample(jax.random.PRNGKey(seed), (), 0)
    assert len(set(np.asarray(ids).tolist())) == 20
    assert np.asarray(present).all()
    assert 0 <= int(ids.min()) and int(ids.max()) < 50
  with pytest.raises(ConfigError, match='1..50'):
    uniform(num_clients=50, cohort_size=51)
