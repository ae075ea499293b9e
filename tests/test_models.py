"""Models: the CPU-friendly convolution equals flax's."""
import jax
import numpy as np
import pytest

from fedround.models import MODELS
from fedround.registry import ConfigError


def test_shifted_cnn_equals_native_cnn():
  """Jitted, as in the round (eagerly each op compiles on its own)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 1))
  native = MODELS.build("cnn(conv='native')", 'model', num_classes=10)
  shifted = MODELS.build("cnn(conv='shifted')", 'model', num_classes=10)
  params = jax.jit(native.init)(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(shifted.init, jax.random.PRNGKey(1), x))
  np.testing.assert_allclose(jax.jit(shifted.apply)(params, x),
                             jax.jit(native.apply)(params, x), atol=1e-5)
  loss = lambda model: lambda p: model.apply(p, x).sum()
  for a, b in zip(jax.tree.leaves(jax.jit(jax.grad(loss(native)))(params)),
                  jax.tree.leaves(jax.jit(jax.grad(loss(shifted)))(params))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('spec', ['logistic', 'mlp(hidden=(16,))', 'cnn',
                                  "cnn(norm='group')"])
def test_models_give_logits(spec):
  model = MODELS.build(spec, 'model', num_classes=7)
  x = np.zeros((3, 8, 8, 1), np.float32)
  assert model.apply(model.init(jax.random.PRNGKey(0), x), x).shape == (3, 7)


def test_unknown_conv_or_norm_is_refused():
  with pytest.raises(ConfigError, match="'auto', 'native' or 'shifted'"):
    MODELS.build("cnn(conv='fft')", 'config.model', num_classes=10)
  with pytest.raises(ConfigError, match="'none' or 'group', got 'batch'"):
    MODELS.build("cnn(norm='batch')", 'config.model', num_classes=10)


def test_group_norm_makes_a_conv_layer_scale_invariant():
  """Scaling a normalised conv layer's weights (as FedLAW's gamma < 1 does)
  leaves the function unchanged; without the norm it changes it."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  for norm, invariant in (('group', True), ('none', False)):
    model = MODELS.build(f"cnn(norm={norm!r})", 'model', num_classes=10)
    params = model.init(jax.random.PRNGKey(1), x)
    shrunk = jax.tree_util.tree_map_with_path(
        lambda path, p: 0.5 * p if 'conv1' in jax.tree_util.keystr(path)
        else p, params)
    same = np.allclose(model.apply(shrunk, x), model.apply(params, x),
                       atol=1e-4)
    assert same == invariant, norm
