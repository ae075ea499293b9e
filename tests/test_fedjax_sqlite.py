"""FedJAX's SQLite federations: files written here as FedJAX's SQLiteBuilder
writes them (a federated_data table of zlib-compressed msgpack client
blobs, arrays as msgpack extension type 1) load client by client, train
through train.run, and bad files fail in one line naming the file."""
import os

import numpy as np
import pytest

from conftest import fedjax_blob as _blob
from conftest import on_files
from conftest import write_fedjax_sqlite as _write
from fedround import train
from fedround.registry import ConfigError


def _emnist_like(num_clients, low, high, seed):
  """FedJAX's EMNIST features: pixels [n, 28, 28] float32, label int32 —
  here 8 x 8, 10 classes."""
  rng = np.random.default_rng(seed)
  # Ids in descending order: the reader keeps the table's row order.
  return [(f'{seed:016x}:f{num_clients - c:04d}_00'.encode(),
           {'pixels': rng.uniform(size=(n, 8, 8)).astype(np.float32),
            'label': rng.integers(0, 10, n).astype(np.int32)})
          for c, n in enumerate(rng.integers(low, high, num_clients))]


@pytest.fixture
def files(tmp_path):
  """Train and test files in a directory whose name holds URI characters."""
  path = tmp_path / 'fed#1?%20'
  path.mkdir()
  train_clients = _emnist_like(5, 3, 12, seed=0)
  test_clients = _emnist_like(3, 1, 4, seed=1)
  _write(path / 'train.sqlite', train_clients)
  _write(path / 'test.sqlite', test_clients)
  return path, train_clients, test_clients


def _config(path, **data):
  return on_files({'name': 'fedjax_sqlite',
                   'train_path': str(path / 'train.sqlite'),
                   'test_path': str(path / 'test.sqlite'), 'num_classes': 10,
                   'example_shape': (8, 8, 1), **data})


def test_clients_load_in_row_order_and_the_test_split_is_pooled(files):
  path, train_clients, test_clients = files
  data = train.load_data(_config(path))
  assert data.num_clients == len(train_clients)
  for i, (_, examples) in enumerate(train_clients):
    n = len(examples['label'])
    assert int(data.n[i]) == n
    x, y = data.train.client(i)
    np.testing.assert_array_equal(x[..., 0], examples['pixels'])
    np.testing.assert_array_equal(y, examples['label'])
  np.testing.assert_array_equal(data.test_y, np.concatenate(
      [ex['label'] for _, ex in test_clients]))
  inverted = train.load_data(_config(path, invert=True))
  np.testing.assert_allclose(np.asarray(inverted.test_x),
                             1 - np.asarray(data.test_x))


def test_a_fedjax_federation_trains(files):
  path, _, _ = files
  result = train.run(_config(path), str(path / 'run'))
  assert result.summary['rounds'] == 2
  assert np.isfinite(result.summary['final_test_loss'])


def _rewrite_train(path, clients, blob=_blob):
  os.remove(path / 'train.sqlite')
  _write(path / 'train.sqlite', clients, blob)


@pytest.mark.parametrize('change, message', [
    (lambda ex: ex.update(label=np.array([], np.int32),
                          pixels=np.zeros((0, 8, 8), np.float32)),
     'holds no examples; every client needs at least one'),
    (lambda ex: ex['label'].__setitem__(0, 12),
     r'has label 12; valid labels: 0..9 \(num_classes=10\)'),
    (lambda ex: ex.update(pixels=ex['pixels'][:, :7]),
     r'examples of shape \(7, 8\) cannot be shaped \(8, 8, 1\)'),
    (lambda ex: ex.update(image=ex.pop('pixels')),
     r"has features image, label; no 'pixels' \(data.x, data.y\)"),
    (lambda ex: ex.update(label=ex['label'][:-1]),
     r"holds \d+ 'pixels' and \d+ 'label' but num_examples says \d+"),
    (lambda ex: ex.update(label=ex['label'].astype(np.float32)),
     r"'label' must be a 1-D integer array of labels"),
])
def test_bad_clients_fail_in_one_line_naming_the_file(change, message, files):
  path, train_clients, _ = files
  change(train_clients[2][1])
  _rewrite_train(path, train_clients)
  with pytest.raises(ConfigError, match=message) as error:
    train.check(_config(path))
  text = str(error.value)
  assert '\n' not in text
  assert text.startswith(f"config.data: data set 'fedjax_sqlite': "
                         f"{path / 'train.sqlite'}: client "
                         f"'{train_clients[2][0].decode()}'")


def test_bad_files_fail_in_one_line_naming_the_file(files):
  path, train_clients, _ = files
  cases = []
  cases.append((lambda: os.remove(path / 'train.sqlite'),
                'no such file; expected a FedJAX SQLite file'))
  cases.append((lambda: (path / 'train.sqlite').write_text('not sqlite'),
                r'not a FedJAX SQLite file \(file is not a database\)'))
  cases.append((lambda: _rewrite_train(path, train_clients,
                                       lambda ex: b'\x00not zlib'),
                'data is not zlib-compressed msgpack of named arrays'))
  cases.append((lambda: _rewrite_train(path, []),
                'the table federated_data holds no clients'))
  for damage, message in cases:
    if (path / 'train.sqlite').exists():
      os.remove(path / 'train.sqlite')
    _write(path / 'train.sqlite', train_clients)
    damage()
    with pytest.raises(ConfigError, match=message) as error:
      train.check(_config(path))
    assert '\n' not in str(error.value)
    assert str(path / 'train.sqlite') in str(error.value)


def test_examples_of_another_shape_are_refused(files):
  """Without example_shape, a test file of other examples is named before
  training, not met as a shape error of the model mid-run."""
  path, _, _ = files
  os.remove(path / 'test.sqlite')
  odd = _emnist_like(2, 1, 3, seed=2)
  for _, examples in odd:
    examples['pixels'] = examples['pixels'][:, :, :4]
  _write(path / 'test.sqlite', odd)
  with pytest.raises(ConfigError, match=r"test.sqlite: client '.*' has "
                     r'examples of shape \(8, 4\), .* of shape \(8, 8\)'):
    train.check(_config(path, example_shape=()))
