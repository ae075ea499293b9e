"""Embedded data sets, the Dirichlet partitioner and cohort sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedround.data import (ClientData, FederatedData, digits, synthetic,
                           uniform)
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
  # Stored flat, client by client, without padding.
  assert data.train.x.shape == (int(np.sum(data.n)), 60)
  for i in (0, 7, 19):
    np.testing.assert_array_equal(data.train.client(i)[0],
                                  xs[i][:int(0.9 * len(xs[i]))])


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
  assert data.example_shape == (8, 8, 1)
  assert int(np.sum(data.n)) + len(data.test_y) == 1797
  assert 0.0 <= float(np.max(data.train.x)) <= 1.0
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


def test_client_data_is_flat_with_offsets():
  """Three clients of 2, 4 and 1 rows of shape (3,): stored as 7 rows with
  starts 0, 2, 6; a client reads its own rows, an index past its count
  reads its last one; the stored bytes are the examples', not 3 x 4 rows."""
  xs = [(np.full((n, 3), i) + np.arange(n)[:, None] / 10).astype(np.float32)
        for i, n in enumerate((2, 4, 1))]
  ys = [np.array([0, 1]), np.array([2, 2, 0, 1]), np.array([1])]
  data = ClientData.from_clients(xs, ys)
  assert data.x.shape == (7, 3) and data.max_examples == 4
  np.testing.assert_array_equal(data.start, [0, 2, 6])
  np.testing.assert_array_equal(data.n, [2, 4, 1])
  for i in range(3):
    np.testing.assert_array_equal(data.client(i)[0], xs[i])
    np.testing.assert_array_equal(data.client(i)[1], ys[i])
  x, y = jax.jit(data.rows)(1, jnp.array([3, 0, 5]))
  np.testing.assert_allclose(x[:, 0], [1.3, 1.0, 1.3])
  np.testing.assert_array_equal(y, [1, 2, 1])
  x, y, valid = jax.jit(data.gather)(jnp.array([2, 0]))
  assert x.shape == (2, 4, 3)
  np.testing.assert_array_equal(valid, [[1, 0, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(y, [[1, 1, 1, 1], [0, 1, 1, 1]])
  np.testing.assert_array_equal(data.owner(), [0, 0, 1, 1, 1, 1, 2])
  row_bytes = 3 * 4 + 4
  assert data.nbytes == 7 * row_bytes + 2 * 3 * 4
  assert data.padded_nbytes == 3 * 4 * row_bytes + 3 * 4


def test_padded_layout_keeps_its_gaps_unowned():
  x = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1)
  data = ClientData.from_padded(x, np.zeros((2, 3), np.int32), [1, 3])
  np.testing.assert_array_equal(data.start, [0, 3])
  np.testing.assert_array_equal(data.owner(), [0, -1, -1, 1, 1, 1])
  np.testing.assert_array_equal(data.client(1)[0][:, 0], [3, 4, 5])
  with pytest.raises(ValueError, match=r'clients \[1\] hold no examples'):
    ClientData.from_clients([np.ones((1, 2)), np.ones((0, 2))],
                            [np.ones(1), np.ones(0)])


def test_federation_reports_stored_against_padded_bytes():
  data = synthetic(num_clients=30, seed=0)
  assert data.train.nbytes < 0.3 * data.train.padded_nbytes  # log-normal
  assert 'MiB stored (padded [N, max_n] layout:' in data.describe()
  counts = data.label_counts
  assert counts.shape == (30, 10)
  np.testing.assert_array_equal(counts.sum(1), data.n)
  np.testing.assert_array_equal(
      counts[4], np.bincount(data.train.client(4)[1], minlength=10))
