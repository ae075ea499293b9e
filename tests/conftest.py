"""All tests see 8 emulated CPU devices; single-device runs use shard=False.

XLA compiles at LLVM -O0 here (--xla_backend_optimization_level=0): the
tests check values, not speed, and compiling is most of their time; runs
and benchmarks compile optimised.

Every compiled program goes to JAX's persistent compilation cache in
``.jax_cache/`` (``make clean`` empties it): a round that several tests, or a
test's subprocesses and sweep workers, build from the same config compiles
once; a program loaded from the cache is the one XLA compiled, so results do
not change. Set JAX_COMPILATION_CACHE_DIR to put it elsewhere.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0')
# Environment variables, so that subprocesses (CLI tests, sweep workers)
# share the cache too.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(ROOT, '.jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import gc  # noqa: E402

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from fedround import train  # noqa: E402,F401  (imported once, then frozen)
from fedround.data import FederatedData  # noqa: E402

# Tracing makes many short-lived objects: Python's collector would scan the
# whole imported heap (jax, flax, tensorflow) again and again. Freeze what
# is imported and collect the young generation less often; nothing a test
# checks depends on when garbage is collected.
gc.freeze()
gc.set_threshold(100_000, 50, 1_000)


@pytest.fixture
def tiny_federation():
  """4 clients of 2-D points, 3 classes, unequal sizes."""
  import numpy as np
  rng = np.random.default_rng(0)
  sizes = [5, 8, 3, 6]
  xs = [rng.normal(size=(s, 2)).astype(np.float32) for s in sizes]
  ys = [rng.integers(0, 3, s).astype(np.int32) for s in sizes]
  return FederatedData.from_clients(xs, ys, xs[0], ys[0], num_classes=3)


def tiny_digits(rounds=2):
  """fedavg_digits at its smallest: 8 clients, 4 a round, 2 local steps of
  logistic regression, evaluated and checkpointed every 2 rounds."""
  import fedavg_digits
  config = fedavg_digits.get_config()
  config.data.num_clients = 8
  config.model = 'logistic'
  config.clients_per_round = 4
  config.client.local_steps = 2
  config.rounds = rounds
  config.eval_every = config.checkpoint_every = 2
  config.progress = False
  return config


def on_files(data: dict):
  """tiny_digits' training (logistic, 4 clients a round, 2 local steps, 2
  rounds) on the federation that ``data`` (config.data) reads from files."""
  config = tiny_digits()
  config.data = data
  return config


def _fedjax_pack(value):
  """fedjax.core.serialization's encodings: a numeric ndarray as msgpack
  extension type 1, an ndarray of byte strings as type 4."""
  import msgpack
  import numpy as np
  if isinstance(value, np.ndarray) and value.dtype.hasobject:
    return msgpack.ExtType(4, msgpack.packb(
        (value.shape, list(value.ravel())), use_bin_type=True))
  if isinstance(value, np.ndarray):
    return msgpack.ExtType(1, msgpack.packb(
        (value.shape, value.dtype.name, value.tobytes('C')),
        use_bin_type=True))
  raise TypeError(f'cannot pack {type(value)}')


def fedjax_blob(examples) -> bytes:
  """One client's features as FedJAX stores them: zlib(msgpack)."""
  import zlib
  import msgpack
  return zlib.compress(msgpack.packb(examples, default=_fedjax_pack,
                                     strict_types=True))


def write_fedjax_sqlite(path, clients, blob=fedjax_blob):
  """A FedJAX SQLite file as its SQLiteBuilder writes it; ``clients``:
  [(client_id bytes, {feature: array})], num_examples from the features'
  length."""
  import sqlite3
  with sqlite3.connect(path) as connection:
    connection.execute('CREATE TABLE federated_data (client_id BLOB NOT NULL '
                       'PRIMARY KEY, data BLOB NOT NULL, num_examples '
                       'INTEGER NOT NULL);')
    connection.executemany(
        'INSERT INTO federated_data VALUES (?, ?, ?);',
        [(cid, blob(ex), len(next(iter(ex.values())))) for cid, ex in clients])
  connection.close()


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # negative int64s as two's complement
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(features: dict) -> bytes:
  """tf.train.Example: Features(1) of map entries (key 1, Feature 2);
  Feature: bytes_list 1, float_list 2 (packed floats), int64_list 3 (packed
  varints)."""
  import struct
  entries = b''
  for key, values in features.items():
    if isinstance(values[0], bytes):
      feature = _field(1, b''.join(_field(1, v) for v in values))
    elif isinstance(values[0], float):
      feature = _field(2, _field(1, struct.pack(f'<{len(values)}f', *values)))
    else:
      feature = _field(3, _field(1, b''.join(_varint(int(v))
                                             for v in values)))
    entries += _field(1, _field(1, key.encode()) + _field(2, feature))
  return _field(1, entries)


def write_tff_sqlite(path, clients):
  """A TFF SQLite file: ``clients`` {(split, client_id): [feature dicts]}
  in its examples and client_metadata tables."""
  import sqlite3
  with sqlite3.connect(path) as connection:
    connection.execute('CREATE TABLE examples (split_name TEXT NOT NULL, '
                       'client_id TEXT NOT NULL, serialized_example_proto '
                       'BLOB NOT NULL)')
    connection.execute('CREATE TABLE client_metadata (client_id TEXT NOT '
                       'NULL, split_name TEXT NOT NULL, num_examples INTEGER '
                       'NOT NULL)')
    for (split, cid), examples in clients.items():
      connection.executemany('INSERT INTO examples VALUES (?, ?, ?)',
                             [(split, cid, _example(e)) for e in examples])
      connection.execute('INSERT INTO client_metadata VALUES (?, ?, ?)',
                         (cid, split, len(examples)))
  connection.close()


def _png(image) -> bytes:
  import io
  import PIL.Image
  out = io.BytesIO()
  PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1
                      else image).save(out, format='PNG')
  return out.getvalue()


def prepare_tfds(data_dir, name, splits):
  """Prepares ``name`` in ``data_dir`` with the real TFDS builder's
  features and version from ``splits`` (split -> list of example dicts of
  numpy images and int labels), as `tfds build` would."""
  import tensorflow_datasets as tfds
  real = tfds.builder(name, data_dir=str(data_dir / 'none'))

  class Fixture(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = real.info.version

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=real.info.features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(examples)
              for split, examples in splits.items()}

    def _generate_examples(self, examples):
      for i, example in enumerate(examples):
        yield i, {k: _png(v) if k == 'image' else v
                  for k, v in example.items()}

  Fixture.name = name
  Fixture(data_dir=str(data_dir), file_format='array_record'
          ).download_and_prepare()


def counting(round_):
  """``round_`` with its fn counting its traces, and the count (a list of
  one int): the round is one jitted function when it stays at 1."""
  count = [0]

  def fn(*args, **kwargs):
    count[0] += 1
    return round_.fn(*args, **kwargs)

  return round_._replace(fn=fn), count


@pytest.fixture
def traces(monkeypatch):
  """The trace count of every round train.build makes while the test runs,
  in build order (``counting``)."""
  from fedround import train
  counts = []
  make_round = train.make_round

  def counted(**kwargs):
    round_, count = counting(make_round(**kwargs))
    counts.append(count)
    return round_

  monkeypatch.setattr(train, 'make_round', counted)

  class Counts:
    def __getitem__(self, i):
      return counts[i][0]

    def __len__(self):
      return len(counts)

  return Counts()


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  import numpy as np
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                               rtol=rtol)
