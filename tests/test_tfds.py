"""TFDS image sets: data sets built here as TFDS prepares them (ArrayRecord
files of PNG-encoded images, with the real builder's features and version)
load through tfds.data_source, split by each partition, train through
train.run, and bad input fails in one line."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import on_files
from conftest import prepare_tfds as _build
from fedround import train
from fedround.data.partitions import iid, label_shards, pachinko
from fedround.registry import ConfigError


def _images(rng, count, shape, classes, coarse=None):
  examples = []
  for i in range(count):
    label = i % classes
    example = {'image': rng.integers(0, 256, shape, dtype=np.uint8),
               'label': label}
    if coarse:
      example['coarse_label'] = label // coarse
      example['id'] = f'{i}'
    examples.append(example)
  return examples


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """mnist (120 train, 30 test) and cifar100 (200 train, 20 test; fine
  label f under coarse label f // 5) prepared in one TFDS data_dir."""
  root = tmp_path_factory.mktemp('tfds')
  rng = np.random.default_rng(0)
  mnist = {'train': _images(rng, 120, (28, 28, 1), 10),
           'test': _images(rng, 30, (28, 28, 1), 10)}
  cifar = {'train': _images(rng, 200, (32, 32, 3), 100, coarse=5),
           'test': _images(rng, 20, (32, 32, 3), 100, coarse=5)}
  _build(root, 'mnist', mnist)
  _build(root, 'cifar100', cifar)
  return root, mnist, cifar


def _stored(root, name, written, split='train'):
  """``written[split]`` in the order TFDS stored it (it shuffles)."""
  index = {e['image'].tobytes(): e for e in written[split]}
  source = tfds.data_source(name, split=split, data_dir=str(root))
  return [index[source[i]['image'].tobytes()] for i in range(len(source))]


def _scaled(examples):
  """The examples' pixels in [0, 1], as float32."""
  return np.stack([e['image'] for e in examples]).astype(np.float32) / 255


def _load(root, **data):
  config = on_files({'name': 'tfds', 'data_dir': str(root), **data})
  return train.load_data(config)


def test_mnist_loads_client_by_client(data_dir):
  root, written, _ = data_dir
  data = _load(root, dataset='mnist', partition='iid', num_clients=6,
               seed=3)
  stored = _stored(root, 'mnist', written)
  labels = np.array([e['label'] for e in stored])
  parts = iid(labels, 6, seed=3)
  assert data.num_clients == 6 and data.num_classes == 10
  np.testing.assert_array_equal(data.n, [20] * 6)
  for i, part in enumerate(parts):
    x, y = data.train.client(i)
    np.testing.assert_array_equal(y, labels[part])
    np.testing.assert_array_equal(x, _scaled([stored[j] for j in part]))
  test = _stored(root, 'mnist', written, 'test')
  np.testing.assert_array_equal(data.test_y, [e['label'] for e in test])
  np.testing.assert_array_equal(data.test_x, _scaled(test))
  assert data.example_shape == (28, 28, 1)


def test_label_shards_give_few_labels_each(data_dir):
  root, _, _ = data_dir
  data = _load(root, dataset='mnist', partition='label_shards',
               num_clients=10)
  counts = data.label_counts
  np.testing.assert_array_equal(counts.sum(1), [12] * 10)
  assert ((counts > 0).sum(1) <= 4).all()  # 2 shards, each <= 2 labels
  np.testing.assert_array_equal(counts.sum(0), [12] * 10)  # all used


def test_cifar100_pachinko_over_fine_or_coarse_labels(data_dir):
  root, _, written = data_dir
  data = _load(root, dataset='cifar100',
               partition='pachinko(alpha=0.1, beta=10.0)', num_clients=4)
  assert data.num_classes == 100 and data.example_shape == (32, 32, 3)
  np.testing.assert_array_equal(data.n, [50] * 4)
  fine = np.array([e['label'] for e in _stored(root, 'cifar100', written)])
  coarse = fine // 5
  parts = pachinko(fine, 4, coarse=coarse, alpha=0.1, beta=10.0)
  for i, part in enumerate(parts):
    np.testing.assert_array_equal(data.train.client(i)[1], fine[part])
  coarse_data = _load(root, dataset='cifar100', partition='iid',
                      num_clients=4, label='coarse_label')
  assert coarse_data.num_classes == 20
  assert int(np.max(coarse_data.train.y)) == 19


def test_tfds_federation_trains(data_dir, tmp_path):
  root, _, _ = data_dir
  config = on_files({'name': 'tfds', 'data_dir': str(root),
                     'dataset': 'mnist', 'partition': 'dirichlet(alpha=1.0)',
                     'num_clients': 8})
  result = train.run(config, str(tmp_path))
  assert int(result.state.round) == 2
  assert np.isfinite(result.summary['final_test_accuracy'])


@pytest.mark.parametrize('data, message', [
    (dict(dataset='imagenet2012'), r"'imagenet2012' is not one of the image "
     r'sets mnist, emnist'),
    (dict(dataset='fashion_mnist'), r"cannot read 'fashion_mnist' from .*"
     r'tfds build fashion_mnist --file_format=array_record'),
    (dict(dataset='mnist', label='fine'), r"'mnist' has no class label "
     r"'fine'; its labels: label"),
    (dict(dataset='mnist', partition='pachinko'),
     r'config.data.partition: .*pachinko needs coarse labels'),
    (dict(dataset='mnist', partition='shards'),
     r"unknown partition 'shards'; valid partitions: dirichlet, iid, "
     'label_shards, pachinko'),
    (dict(dataset='mnist', partition='iid', num_clients=500),
     'cannot split 120 examples over 500 clients'),
])
def test_bad_input_is_one_line(data_dir, data, message):
  root, _, _ = data_dir
  with pytest.raises(ConfigError, match=message) as error:
    _load(root, **data)
  assert '\n' not in str(error.value)


def test_partitions_by_hand():
  y = np.repeat(np.arange(4), 6)  # 24 examples, 6 of each label
  parts = label_shards(y, num_clients=4, shards_per_client=1, seed=0)
  assert sorted(len(np.unique(y[p])) for p in parts) == [1, 1, 1, 1]
  parts = iid(y, num_clients=5, seed=0)
  assert sorted(map(len, parts)) == [4, 5, 5, 5, 5]
  assert len(np.unique(np.concatenate(parts))) == 24
  # Two clients take every example: labels run out and leave the draws.
  coarse = y // 2
  parts = pachinko(y, num_clients=2, coarse=coarse, alpha=0.1, beta=1.0,
                   seed=1)
  everything = np.sort(np.concatenate(parts))
  np.testing.assert_array_equal(everything, np.arange(24))


def test_pachinko_concentrates_with_small_alpha():
  y = np.repeat(np.arange(100), 50)  # CIFAR-100's 5,000 a class, scaled
  coarse = y // 5
  share = {}
  for alpha in (0.1, 100.0):
    parts = pachinko(y, num_clients=50, coarse=coarse, alpha=alpha,
                     beta=10.0, seed=0)
    assert all(len(p) == 100 for p in parts)
    assert len(np.unique(np.concatenate(parts))) == 5000
    share[alpha] = np.mean([np.bincount(coarse[p], minlength=20).max() / 100
                            for p in parts])
  assert share[0.1] > 0.4 > 0.15 > share[100.0]
