"""FedJAX's SQLite federations (fedjax.core.sqlite_federated_data; the files
``fedjax.datasets`` downloads, e.g. federated_emnist_{train,test}.sqlite).

One table, ``federated_data(client_id BLOB PRIMARY KEY, data BLOB,
num_examples INTEGER)``; each client's ``data`` is zlib-compressed msgpack
of a dict from feature name to array, an array packed as msgpack extension
type 1 holding ``(shape, dtype name, C-order bytes)`` (fedjax.core.
serialization; type 4 an array of byte strings). This reader takes
classification data with numeric features (EMNIST: ``pixels`` [n, 28, 28]
float32 and ``label``; CIFAR-100: ``image`` and ``label`` or
``coarse_label``); fedjax_text reads Shakespeare and Stack Overflow.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import zlib
from typing import Sequence

import msgpack
import numpy as np

from fedround.data.federated import FederatedData
from fedround.data.files import check_labels, check_num_classes, federation

TABLE = 'federated_data(client_id, data, num_examples)'
_NDARRAY = 1  # fedjax.core.serialization._MsgpackExtType.ndarray
_NPSCALAR = 3
_BYTES_NDARRAY = 4


def fedjax_sqlite(train_path: str, test_path: str, num_classes: int,
                  x: str = 'pixels', y: str = 'label',
                  example_shape: Sequence[int] = (),
                  invert: bool = False) -> FederatedData:
  """Every client of ``train_path`` (in row order) with features ``x`` and
  labels ``y``; the clients of ``test_path`` pooled as the test split. Each
  example is reshaped to ``example_shape`` (EMNIST: ``(28, 28, 1)``; empty:
  as stored) and, with ``invert``, x becomes 1 - x (FedJAX's EMNIST
  preprocessing: dark strokes on a white page become bright on black)."""
  check_num_classes(num_classes)
  train, test = (_read(path, x, y, num_classes, tuple(example_shape))
                 for path in (train_path, test_path))
  return federation(train, test, num_classes, invert)


def client_features(path: str):
  """('{path}: client {id}', its features, num_examples) of every client of
  a FedJAX SQLite file, in row order."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file; expected a FedJAX SQLite file '
                     f'(a table {TABLE})')
  try:
    read_only = pathlib.Path(path).absolute().as_uri() + '?mode=ro'
    with contextlib.closing(sqlite3.connect(read_only,
                                            uri=True)) as connection:
      rows = connection.execute(
          'SELECT client_id, data, num_examples FROM federated_data '
          'ORDER BY rowid').fetchall()
  except sqlite3.DatabaseError as e:
    raise ValueError(f'{path}: not a FedJAX SQLite file ({e}); expected a '
                     f'table {TABLE}') from None
  if not rows:
    raise ValueError(f'{path}: the table federated_data holds no clients')
  for client_id, blob, count in rows:
    name = (client_id.decode(errors='replace')
            if isinstance(client_id, bytes) else str(client_id))
    where = f'{path}: client {name!r}'
    yield where, _features(where, blob), count


def check_features(where: str, features: dict, names, fields: str) -> None:
  """``features`` hold every one of ``names`` (the config ``fields``)."""
  missing = [f for f in names if f not in features]
  if missing:
    raise ValueError(f'{where} has features '
                     f'{", ".join(sorted(map(str, features)))};'
                     f' no {", ".join(map(repr, missing))} ({fields})')


def _read(path, x_name, y_name, num_classes, shape):
  """'{path}: client {id}' -> (x, y) of every client of one file, in row
  order."""
  clients = {}
  for where, features, count in client_features(path):
    check_features(where, features, (x_name, y_name), 'data.x, data.y')
    xs, ys = features[x_name], features[y_name]
    if not (isinstance(xs, np.ndarray) and xs.ndim >= 1 and (
        np.issubdtype(xs.dtype, np.number) or xs.dtype.name == 'bfloat16')):
      raise ValueError(f'{where}: {x_name!r} is not a numeric array (text: '
                       "data.name 'fedjax_shakespeare' or "
                       "'fedjax_stackoverflow')")
    if not (isinstance(ys, np.ndarray) and ys.ndim == 1
            and np.issubdtype(ys.dtype, np.integer)):
      raise ValueError(f'{where}: {y_name!r} must be a 1-D integer array of '
                       'labels')
    check_labels(where, ys, num_classes)
    if len(xs) != len(ys) or len(ys) != count:
      raise ValueError(f'{where} holds {len(xs)} {x_name!r} and {len(ys)} '
                       f'{y_name!r} but num_examples says {count}')
    xs = xs.astype(np.float32)
    if shape:
      size = int(np.prod(xs.shape[1:]))
      if size != int(np.prod(shape)):
        raise ValueError(f'{where}: examples of shape {xs.shape[1:]} cannot '
                         f'be shaped {shape} (data.example_shape)')
      xs = xs.reshape((len(xs), *shape))
    clients[where] = (xs, ys.astype(np.int32))
  return clients


def _features(where, blob) -> dict:
  try:
    features = msgpack.unpackb(zlib.decompress(blob), ext_hook=_unpack_array,
                               raw=False)
  except (zlib.error, ValueError, TypeError, AttributeError,
          msgpack.UnpackException) as e:
    raise ValueError(f'{where}: data is not zlib-compressed msgpack of '
                     f'named arrays ({e})') from None
  if not isinstance(features, dict):
    raise ValueError(f'{where}: data is not a dict of named arrays')
  return features


def _unpack_array(code, data):
  """fedjax.core.serialization's array extension types."""
  if code == _BYTES_NDARRAY:
    shape, flat = msgpack.unpackb(data, raw=True)
    return np.array(flat, dtype=object).reshape(shape)
  if code not in (_NDARRAY, _NPSCALAR):
    return msgpack.ExtType(code, data)
  shape, dtype, buffer = msgpack.unpackb(data, raw=True)
  array = np.frombuffer(buffer, dtype=np.dtype(dtype.decode())).reshape(shape)
  return array if code == _NDARRAY else array[()]
