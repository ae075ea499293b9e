"""Model soups (Wortsman et al., ICML 2022): hand-computed greedy soups,
the uniform soup, and the greedy soup's guarantee on random instances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close
from fedround.analysis.soups import greedy_soup, uniform_soup


def closeness(params):
  """A score peaked at x = 1: -(x - 1)^2."""
  return -jnp.sum((params['x'] - 1.0) ** 2)


def scalars(*values):
  return {'x': jnp.asarray(values, jnp.float32)[:, None]}


def test_uniform_soup_is_the_mean():
  rng = np.random.default_rng(0)
  models = {'w': rng.normal(size=(5, 3, 2)), 'b': rng.normal(size=(5, 2))}
  assert_trees_close(uniform_soup(jax.tree.map(jnp.asarray, models)),
                     jax.tree.map(lambda m: m.mean(0), models), atol=1e-6)


def test_greedy_soup_by_hand():
  # Scores -1, -1, -0.25, -16: order 2, 0, 1 (the tie keeps the lower
  # index first), 3. Soup 1.5 (-0.25); + 0.0 -> mean 0.75, -0.0625: kept;
  # + 2.0 -> mean 3.5 / 3, -1/36: kept; + 5.0 -> mean 8.5 / 4: dropped.
  soup, ingredients, score = greedy_soup(scalars(0.0, 2.0, 1.5, 5.0),
                                         closeness)
  np.testing.assert_allclose(soup['x'], [3.5 / 3], rtol=1e-6)
  np.testing.assert_array_equal(ingredients, [True, True, True, False])
  np.testing.assert_allclose(score, -1 / 36, rtol=1e-5)


def test_greedy_soup_adds_only_on_strict_improvement():
  # The best model alone scores 0; adding 1.2 (mean 1.1) or an equal copy
  # of the best (score still 0) does not strictly improve.
  soup, ingredients, score = greedy_soup(scalars(1.2, 1.0, 1.0), closeness)
  np.testing.assert_allclose(soup['x'], [1.0])
  np.testing.assert_array_equal(ingredients, [False, True, False])
  assert score == 0


def test_a_single_model_is_its_own_soup_and_no_model_is_refused():
  soup, ingredients, score = greedy_soup(scalars(3.0), closeness)
  np.testing.assert_allclose(soup['x'], [3.0])
  np.testing.assert_array_equal(ingredients, [True])
  np.testing.assert_allclose(score, -4)
  with pytest.raises(ValueError, match='at least one model'):
    greedy_soup({'x': jnp.zeros((0, 1))}, closeness)


def test_nan_scores_never_join():
  score = lambda p: jnp.where(p['x'][0] > 4, jnp.nan, closeness(p))
  soup, ingredients, best = greedy_soup(scalars(5.0, 0.0, 2.0), score)
  np.testing.assert_array_equal(ingredients, [False, True, True])
  np.testing.assert_allclose(soup['x'], [1.0])
  assert best == 0


def linear_instance(seed, models=6, features=5, classes=3, held_out=64):
  """Noisy copies of a true linear classifier and held-out data from it."""
  rng = np.random.default_rng(seed)
  true = rng.normal(size=(features, classes))
  noise = rng.uniform(0.5, 3.0)
  soup = {'w': true + noise * rng.normal(size=(models, features, classes)),
          'b': noise * rng.normal(size=(models, classes))}
  x = rng.normal(size=(held_out, features))
  y = np.argmax(x @ true + 0.3 * rng.normal(size=(held_out, classes)), 1)
  return (jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), soup),
          jnp.asarray(x, jnp.float32), jnp.asarray(y))


def accuracy(params, x, y):
  return jnp.mean(jnp.argmax(x @ params['w'] + params['b'], -1) == y)


@jax.jit
def jitted_soup(models, x, y):
  return greedy_soup(models, lambda p: accuracy(p, x, y))


def test_greedy_soup_is_never_worse_than_its_best_ingredient():
  for seed in range(12):
    models, x, y = linear_instance(seed)
    soup, ingredients, score = jitted_soup(models, x, y)
    individual = jax.vmap(lambda p: accuracy(p, x, y))(models)
    assert score >= individual.max()
    assert ingredients[int(jnp.argmax(individual))]
    np.testing.assert_allclose(score, accuracy(soup, x, y))
    chosen = np.asarray(ingredients)
    assert_trees_close(soup, jax.tree.map(
        lambda m: np.asarray(m)[chosen].mean(0), models), atol=1e-5)


def test_eager_agrees_with_jitted():
  models, x, y = linear_instance(3)
  eager = greedy_soup(models, lambda p: accuracy(p, x, y))
  jitted = jitted_soup(models, x, y)
  assert_trees_close(eager[0], jitted[0], atol=1e-6)
  np.testing.assert_array_equal(eager[1], jitted[1])
  np.testing.assert_allclose(eager[2], jitted[2])
