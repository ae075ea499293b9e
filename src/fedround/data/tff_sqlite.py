"""TFF's own SQLite federations, read without TensorFlow.

TFF stores one example per row (fedjax.core.sqlite_federated_data's
TFFSQLiteClientsIterator documents it): ``examples(split_name, client_id,
serialized_example_proto)`` and ``client_metadata(client_id, split_name,
num_examples)``, each example a serialized ``tf.train.Example``. The
protos are parsed with protobuf from their published schema
(tensorflow/core/example/{example,feature}.proto), declared here. TFF's
federated CIFAR-100 (``scripts/download.py cifar100_tff``: 500 train and
100 test clients, ``image`` 32 x 32 x 3 int64, ``label``, ``coarse_label``)
is read as is, or straight from its ``.lzma`` file (decompressed once
beside it).
"""
from __future__ import annotations

import contextlib
import functools
import lzma
import os
import pathlib
import shutil
import sqlite3
from typing import Sequence

import numpy as np

from fedround.data.federated import FederatedData
from fedround.data.files import check_labels, check_num_classes, federation

TABLES = ('examples(split_name, client_id, serialized_example_proto), '
          'client_metadata(client_id, split_name, num_examples)')


@functools.cache
def _example_class():
  """tensorflow.Example from its schema, in a private descriptor pool."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  fields = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(
      name='fedround/tf_example.proto', package='tensorflow',
      syntax='proto3')

  def message(name, *specs, parent=None):
    m = (parent.nested_type if parent else proto.message_type).add(name=name)
    for field_name, number, kind, label, type_name, oneof in specs:
      field = m.field.add(name=field_name, number=number, type=kind,
                          label=label)
      if type_name:
        field.type_name = type_name
      if oneof is not None:
        field.oneof_index = oneof
    return m

  repeated, optional = fields.LABEL_REPEATED, fields.LABEL_OPTIONAL
  message('BytesList', ('value', 1, fields.TYPE_BYTES, repeated, '', None))
  message('FloatList', ('value', 1, fields.TYPE_FLOAT, repeated, '', None))
  message('Int64List', ('value', 1, fields.TYPE_INT64, repeated, '', None))
  feature = message(
      'Feature',
      ('bytes_list', 1, fields.TYPE_MESSAGE, optional,
       '.tensorflow.BytesList', 0),
      ('float_list', 2, fields.TYPE_MESSAGE, optional,
       '.tensorflow.FloatList', 0),
      ('int64_list', 3, fields.TYPE_MESSAGE, optional,
       '.tensorflow.Int64List', 0))
  feature.oneof_decl.add(name='kind')
  features = message('Features', ('feature', 1, fields.TYPE_MESSAGE,
                                  repeated, '.tensorflow.Features.FeatureEntry',
                                  None))
  entry = message('FeatureEntry',
                  ('key', 1, fields.TYPE_STRING, optional, '', None),
                  ('value', 2, fields.TYPE_MESSAGE, optional,
                   '.tensorflow.Feature', None), parent=features)
  entry.options.map_entry = True
  message('Example', ('features', 1, fields.TYPE_MESSAGE, optional,
                      '.tensorflow.Features', None))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName('tensorflow.Example'))


def parse_example(serialized: bytes) -> dict[str, np.ndarray]:
  """A serialized tf.train.Example -> {feature: its values}."""
  example = _example_class().FromString(serialized)
  out = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof('kind')
    values = getattr(feature, kind).value if kind else []
    out[name] = (np.array(list(values), dtype=object) if kind == 'bytes_list'
                 else np.asarray(values, np.float32 if kind == 'float_list'
                                 else np.int64))
  return out


def tff_sqlite(path: str, num_classes: int, x: str = 'image',
               y: str = 'label', example_shape: Sequence[int] = (32, 32, 3),
               train_split: str = 'train',
               test_split: str = 'test') -> FederatedData:
  """The clients of ``train_split`` (by client id, as TFF and FedJAX order
  them) with features ``x`` (reshaped to ``example_shape``) and labels
  ``y``; the ``test_split`` clients pooled as the test split."""
  check_num_classes(num_classes)
  path = _decompressed(path)
  train, test = (_read(path, split, x, y, num_classes, tuple(example_shape))
                 for split in (train_split, test_split))
  return federation(train, test, num_classes, invert=False)


def _decompressed(path: str) -> str:
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file; expected a TFF SQLite file '
                     f'(tables {TABLES}), or its .lzma')
  if not path.endswith('.lzma'):
    return path
  target = path[:-len('.lzma')]
  if not os.path.exists(target):
    try:
      with lzma.open(path) as source, open(target + '.partial', 'wb') as out:
        shutil.copyfileobj(source, out, 1 << 20)
    except lzma.LZMAError as e:
      raise ValueError(f'{path}: not an lzma file ({e})') from None
    os.replace(target + '.partial', target)
  return target


def _read(path, split, x_name, y_name, num_classes, shape):
  """'{path}: {split} client {id}' -> (x, y) of every client of a split."""
  try:
    uri = pathlib.Path(path).absolute().as_uri() + '?mode=ro'
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
      ids = [r[0] for r in connection.execute(
          'SELECT client_id FROM client_metadata WHERE split_name = ? '
          'ORDER BY client_id', [split])]
      rows = {}
      for client_id, blob in connection.execute(
          'SELECT client_id, serialized_example_proto FROM examples WHERE '
          'split_name = ? ORDER BY rowid', [split]):
        rows.setdefault(client_id, []).append(blob)
  except sqlite3.DatabaseError as e:
    raise ValueError(f'{path}: not a TFF SQLite file ({e}); expected tables '
                     f'{TABLES}') from None
  if not ids:
    raise ValueError(f'{path}: no clients of split {split!r} in '
                     'client_metadata')
  clients = {}
  for client_id in ids:
    where = f'{path}: {split} client {client_id!r}'
    examples = []
    for blob in rows.get(client_id, []):
      try:
        examples.append(parse_example(blob))
      except Exception as e:  # protobuf's DecodeError and kin
        raise ValueError(f'{where}: an example is not a tf.train.Example '
                         f'({type(e).__name__})') from None
    if not examples:
      raise ValueError(f'{where} holds no examples; every client needs at '
                       'least one')
    missing = [f for f in (x_name, y_name) if f not in examples[0]]
    if missing:
      raise ValueError(f'{where} has features {", ".join(sorted(examples[0]))}'
                       f'; no {", ".join(map(repr, missing))} (data.x, data.y)')
    try:
      xs = np.stack([e[x_name].reshape(shape) for e in examples])
    except ValueError:
      raise ValueError(f'{where}: {x_name!r} of {examples[0][x_name].size} '
                       f'values cannot be shaped {shape} '
                       '(data.example_shape)') from None
    ys = np.array([int(e[y_name][0]) if e[y_name].size == 1 else -1
                   for e in examples])
    check_labels(where, ys, num_classes)
    clients[where] = (xs.astype(np.float32), ys.astype(np.int32))
  return clients
