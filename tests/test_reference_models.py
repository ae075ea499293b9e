"""The reference benchmarks' models: parameter counts as FedJAX's tests and
Reddi et al. give them (TFF's ResNet-18 counted from its code), and each
trains through train.run on a FedJAX SQLite fixture of its data set's
format; the full-size ResNet-18 and language models train under `slow`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import on_files, write_fedjax_sqlite
from fedround import train
from fedround.data.text import SHAKESPEARE_CHARACTERS
from fedround.models import MODELS

SO_LSTM = 'lstm_lm(embed=96, hidden=(670,), projection=96)'


def _count(spec, num_classes, shape, dtype=jnp.float32):
  model = MODELS.build(spec, 'config.model', num_classes=num_classes)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, *shape), dtype))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize('spec, num_classes, shape, dtype, expected', [
    ('emnist_cnn', 62, (28, 28, 1), jnp.float32, 1_206_590),  # FedJAX
    ('lstm_lm', 90, (80,), jnp.int32, 820_522),  # FedJAX's Shakespeare
    (SO_LSTM, 10_004, (20,), jnp.int32, 4_050_748),  # Reddi et al., FedJAX
    ('resnet18_gn', 100, (24, 24, 3), jnp.float32, 11_227_812),  # TFF's
    ('resnet18_gn', 10, (32, 32, 3), jnp.float32, 11_181_642),
    # LEAF's stacked_lstm models, counted from their TensorFlow code.
    ('lstm_classifier', 80, (80,), jnp.int32, 817_872),
    ('lstm_classifier(vocabulary=400_001, embed=100, hidden=(100, 100), '
     'dense=128)', 2, (25,), jnp.int32, 40_174_086),
])
def test_parameter_counts_match_the_references(spec, num_classes, shape,
                                               dtype, expected):
  assert _count(spec, num_classes, shape, dtype) == expected


def _images(tmp_path, feature, shape, num_classes, dtype):
  """FedJAX-format train and test files of random images, 4 + 2 clients."""
  rng = np.random.default_rng(0)
  def clients(count, prefix):
    out = []
    for i in range(count):
      n = int(rng.integers(4, 9))
      pixels = rng.uniform(size=(n, *shape))
      if dtype == np.uint8:
        pixels = (pixels * 255).astype(np.uint8)
      out.append((f'{prefix}{i}'.encode(),
                  {feature: pixels.astype(dtype),
                   'label': rng.integers(0, num_classes, n).astype(np.int32)}))
    return out
  for split, count in (('train', 4), ('test', 2)):
    write_fedjax_sqlite(tmp_path / f'{split}.sqlite', clients(count, split))
  return {'name': 'fedjax_sqlite', 'train_path': str(tmp_path / 'train.sqlite'),
          'test_path': str(tmp_path / 'test.sqlite'), 'x': feature,
          'num_classes': num_classes}


def _trains(config, tmp_path, rounds=2):
  config.rounds = config.eval_every = config.checkpoint_every = rounds
  config.clients_per_round = 2
  result = train.run(config, str(tmp_path / 'run'))
  assert int(result.state.round) == rounds
  assert np.isfinite(result.summary['final_test_loss'])


def test_emnist_cnn_trains_on_fedjax_emnist(tmp_path):
  config = on_files(_images(tmp_path, 'pixels', (28, 28), 62, np.float32)
                    | {'example_shape': (28, 28, 1), 'invert': True})
  config.model, config.shard = 'emnist_cnn', False
  _trains(config, tmp_path)


@pytest.mark.parametrize('kernel, stride', [(7, 2), (3, 1), (1, 1), (2, 2)])
def test_shifted_convolution_equals_native(kernel, stride):
  """The strided shifted convolution (the ResNet's 7x7 stride-2 stem) is
  the native SAME one, on an odd and an even side."""
  from fedround.models.convolution import native_conv, shifted_conv
  weights = jax.random.normal(jax.random.PRNGKey(0), (kernel, kernel, 3, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 10, 3))
  jitted = lambda f: jax.jit(f, static_argnums=2)(x, weights, stride)
  np.testing.assert_allclose(jitted(shifted_conv), jitted(native_conv),
                             atol=1e-4)


# A ResNet-18 round compiles for about 30 s on this machine, so it trains
# under `slow`; its parts are checked here (counts, the strided stem).
@pytest.mark.slow
@pytest.mark.parametrize('width', [8, 64])
def test_resnet18_gn_trains_on_fedjax_cifar100(tmp_path, width):
  config = on_files(_images(tmp_path, 'image', (32, 32, 3), 100, np.uint8))
  config.model = f'resnet18_gn(width={width})'
  _trains(config, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize('model', ['lstm_lm', 'transformer_lm'])
def test_full_size_language_models_train_on_shakespeare(tmp_path, model):
  rng = np.random.default_rng(0)
  letters = np.frombuffer(SHAKESPEARE_CHARACTERS, np.uint8)
  snippets = lambda: np.array(
      [bytes(rng.choice(letters, int(rng.integers(20, 200))))
       for _ in range(int(rng.integers(2, 5)))], dtype=object)
  for split, count in (('train', 4), ('test', 2)):
    write_fedjax_sqlite(tmp_path / f'{split}.sqlite', [
        (f'{split}{i}'.encode(), {'snippets': snippets()})
        for i in range(count)])
  config = on_files({'name': 'fedjax_shakespeare',
                     'train_path': str(tmp_path / 'train.sqlite'),
                     'test_path': str(tmp_path / 'test.sqlite')})
  config.task, config.model = 'next_token', model
  _trains(config, tmp_path)
