"""FRL's supermask layers: frozen signed-constant weights out of the params,
the top-k mask by |score|, and the straight-through gradient."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedround.models import MODELS
from fedround.models.supermask import (SupermaskConv, SupermaskDense,
                                       signed_constant, top_k_mask)
from fedround.registry import ConfigError


@pytest.mark.parametrize('size, k, kept', [(12, 0.5, 6), (10, 0.3, 3),
                                           (7, 0.5, 4), (5, 1.0, 5)])
def test_equal_scores_keep_exactly_the_top_k_fraction(size, k, kept):
  """FRL drops int((1 - k) n) edges; among equal scores the lower flat
  indices go first."""
  mask = np.asarray(top_k_mask(jnp.full((size,), 0.3), k))
  np.testing.assert_array_equal(mask, [0] * (size - kept) + [1] * kept)


def test_layer_with_equal_scores_uses_the_last_half_of_its_edges():
  layer = SupermaskDense(3, index=2, seed=7)
  x = jnp.array([[1., -2., 0.5, 4.]])
  scores = {'params': {'scores': jnp.full((4, 3), -0.2)}}
  weight = signed_constant(7, 2, (4, 3), fan_in=4)
  mask = np.array([0] * 6 + [1] * 6, np.float32).reshape(4, 3)
  np.testing.assert_allclose(layer.apply(scores, x), x @ (weight * mask),
                             rtol=1e-6)


def test_mask_keeps_the_largest_absolute_scores():
  scores = jnp.array([0.1, -0.9, 0.5, -0.2])
  np.testing.assert_array_equal(top_k_mask(jnp.abs(scores), 0.5),
                                [0, 1, 1, 0])


def test_params_are_only_scores_and_weights_are_signed_constants():
  model = MODELS.build('supermask_cnn(features=(4, 8), dense=16)', 'model',
                       num_classes=10)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  fan_ins = {'conv0': 9, 'conv1': 36, 'dense0': 128, 'dense1': 16}
  assert set(params['params']) == set(fan_ins)
  for name, fan_in in fan_ins.items():
    assert list(params['params'][name]) == ['scores']
    scores = np.asarray(params['params'][name]['scores'])
    assert np.abs(scores).max() <= 1 / math.sqrt(fan_in)
    assert np.abs(scores).max() > 0.8 / math.sqrt(fan_in)  # not degenerate
  weight = np.asarray(signed_constant(0, 1, (3, 3, 4, 8), 36))
  np.testing.assert_allclose(np.abs(weight), math.sqrt(2 / 36), rtol=1e-6)
  assert 0.3 < np.mean(weight > 0) < 0.7
  other_layer = np.asarray(signed_constant(0, 2, (3, 3, 4, 8), 36))
  assert not np.array_equal(weight, other_layer)
  np.testing.assert_array_equal(weight, signed_constant(0, 1, (3, 3, 4, 8),
                                                        36))


def test_gradient_passes_the_mask_straight_through():
  """loss = sum(x @ (w * mask)): d loss / d score_ij = x_i w_ij sign(s_ij)
  for every edge, kept or not (straight through the mask, then |.|)."""
  layer = SupermaskDense(2, index=0, seed=3)
  x = jnp.array([[1., 2., -3.]])
  scores = jnp.array([[0.3, -0.1], [-0.6, 0.05], [0.2, -0.4]])
  grad = jax.grad(lambda s: jnp.sum(layer.apply({'params': {'scores': s}},
                                                x)))(scores)
  weight = np.asarray(signed_constant(3, 0, (3, 2), fan_in=3))
  expected = np.asarray(x).T * weight * np.sign(np.asarray(scores))
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  assert np.all(np.asarray(grad) != 0)


def test_supermask_models_give_logits_and_convs_agree():
  """Jitted, as in the round (eagerly each op compiles on its own)."""
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 8, 8, 1))
  for spec in ('supermask_mlp(hidden=(16,))', 'supermask_cnn'):
    model = MODELS.build(spec, 'model', num_classes=10)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert jax.jit(model.apply)(params, x).shape == (5, 10)
  conv = lambda impl: SupermaskConv(6, index=0, conv=impl)
  params = jax.jit(conv('native').init)(jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(jax.jit(conv('native').apply)(params, x),
                             jax.jit(conv('shifted').apply)(params, x),
                             atol=1e-5)


def test_bad_keep_fraction_is_refused():
  for spec in ('supermask_mlp(k=0)', 'supermask_cnn(k=1.5)'):
    with pytest.raises(ConfigError, match=r'config.model: .*k \(the '
                       r'fraction of edges each layer keeps\) must be in'):
      MODELS.build(spec, 'config.model', num_classes=10)
