"""TFF's SQLite federations: a file written here as TFF lays it out (one
tf.train.Example per row, encoded by conftest's hand-written protobuf wire
encoder, independent of the reader's protobuf schema), plain and lzma-compressed,
loads client by client, trains, and bad files fail in one line."""
import lzma
import sqlite3

import numpy as np
import pytest

from conftest import on_files
from conftest import write_tff_sqlite as _write
from fedround import train
from fedround.registry import ConfigError


def _cifar(rng, n):
  return [{'image': rng.integers(0, 256, 4 * 4 * 3).tolist(),
           'label': [int(rng.integers(0, 10))], 'coarse_label': [0],
           'id': [b'x']} for _ in range(n)]


@pytest.fixture
def cifar(tmp_path):
  rng = np.random.default_rng(0)
  clients = {('train', cid): _cifar(rng, n)
             for cid, n in (('7', 3), ('12', 5), ('3', 2))}
  clients |= {('test', cid): _cifar(rng, 2) for cid in ('1', '0')}
  path = tmp_path / 'cifar100.sqlite'
  _write(path, clients)
  return path, clients


def _config(path, **data):
  return on_files({'name': 'tff_sqlite', 'path': str(path),
                   'num_classes': 10, 'example_shape': (4, 4, 3), **data})


def test_clients_in_id_order_with_their_examples(cifar, tmp_path):
  path, clients = cifar
  data = train.load_data(_config(path))
  order = ['12', '3', '7']  # TFF and FedJAX sort client ids as strings
  np.testing.assert_array_equal(data.n, [5, 2, 3])
  for i, cid in enumerate(order):
    x, y = data.train.client(i)
    written = clients[('train', cid)]
    np.testing.assert_array_equal(
        x, np.array([e['image'] for e in written]).reshape(-1, 4, 4, 3))
    np.testing.assert_array_equal(y, [e['label'][0] for e in written])
  assert len(data.test_y) == 4
  # The same file lzma-compressed is decompressed beside it, once.
  packed = tmp_path / 'copy.sqlite.lzma'
  packed.write_bytes(lzma.compress(path.read_bytes()))
  again = train.load_data(_config(packed))
  np.testing.assert_array_equal(again.train.x, data.train.x)
  assert (tmp_path / 'copy.sqlite').exists()
  coarse = train.load_data(_config(path, y='coarse_label'))
  assert int(np.max(coarse.train.y)) == 0


def test_a_tff_federation_trains(cifar, tmp_path):
  path, _ = cifar
  config = _config(path)
  config.clients_per_round = 2
  result = train.run(config, str(tmp_path / 'run'))
  assert np.isfinite(result.summary['final_test_loss'])


def test_bad_files_fail_in_one_line(cifar, tmp_path):
  path, clients = cifar
  cases = [(_config(tmp_path / 'nope.sqlite'), 'no such file'),
           (_config(path, y='fine'), r"no 'fine' \(data.x, data.y\)"),
           (_config(path, example_shape=(5, 5, 3)), 'cannot be shaped'),
           (_config(path, num_classes=2), 'valid labels: 0..1'),
           (_config(path, train_split='validation'),
            "no clients of split 'validation'")]
  broken = tmp_path / 'broken.sqlite'
  _write(broken, clients)
  with sqlite3.connect(broken) as connection:
    connection.execute("UPDATE examples SET serialized_example_proto = "
                       "x'ffff' WHERE client_id = '3'")
  connection.close()
  cases.append((_config(broken), r"train client '3': an example is not a "
                'tf.train.Example'))
  not_sqlite = tmp_path / 'text.sqlite'
  not_sqlite.write_text('hello')
  cases.append((_config(not_sqlite), 'not a TFF SQLite file'))
  for config, message in cases:
    with pytest.raises(ConfigError, match=message) as error:
      train.load_data(config)
    assert '\n' not in str(error.value)
