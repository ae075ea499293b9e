"""fedround's own federation on disk, read memory-mapped
(``data.name='npy'``, ``data.path``).

A directory of one ``.npy`` file per array (``train.x``, ``train.y``,
``train.start``, ``train.n``, ``test_x``, ``test_y``) and
``federation.json`` (the format, num_classes, each array's shape and
dtype), written by ``save`` (``scripts/convert.py`` writes any configured
federation). Opening it maps the files: nothing is read until it is used,
so with ``data.placement='host'`` a federation larger than host memory
trains, each chunk reading only its cohorts' rows from the page cache.
Opening checks everything but the examples themselves: the manifest, each
file's shape and dtype, every client's rows and every label.
"""
from __future__ import annotations

import json
import os

import numpy as np

from fedround.data.federated import ClientData, FederatedData
from fedround.data.files import check_num_classes

FORMAT = 'fedround-npy-1'
MANIFEST = 'federation.json'
ARRAYS = ('train.x', 'train.y', 'train.start', 'train.n', 'test_x', 'test_y')
_CHUNK = 1 << 22  # labels checked about this many at a time


def save(data: FederatedData, directory: str) -> None:
  """Writes ``data``'s train and test splits; the manifest last, so an
  interrupted save is not a federation."""
  if data.proxy_x is not None or data.validation is not None:
    raise ValueError('save the federation before with_splits: the proxy and '
                     'validation splits come from the config')
  os.makedirs(directory, exist_ok=True)
  arrays = {'train.x': data.train.x, 'train.y': data.train.y,
            'train.start': data.train.start, 'train.n': data.train.n,
            'test_x': data.test_x, 'test_y': data.test_y}
  shapes = {}
  for name, array in arrays.items():
    array = np.asarray(array)
    np.save(os.path.join(directory, f'{name}.npy'), array)
    shapes[name] = {'shape': list(array.shape), 'dtype': array.dtype.str}
  manifest = os.path.join(directory, MANIFEST)
  with open(manifest + '.tmp', 'w') as f:
    json.dump({'format': FORMAT, 'num_classes': data.num_classes,
               'arrays': shapes}, f, indent=1)
  os.replace(manifest + '.tmp', manifest)


def npy(path: str) -> FederatedData:
  """The federation ``save`` wrote to ``path``, memory-mapped."""
  manifest = _manifest(path)
  arrays = {name: _open(path, name, manifest['arrays'][name])
            for name in ARRAYS}
  num_classes = manifest['num_classes']
  train = ClientData(x=arrays['train.x'], y=arrays['train.y'],
                     start=np.asarray(arrays['train.start']),
                     n=np.asarray(arrays['train.n']),
                     max_examples=int(np.max(arrays['train.n'], initial=0)))
  _check_clients(path, train)
  for name in ('train.y', 'test_y'):
    _check_labels(path, name, num_classes)
  if len(arrays['test_x']) != len(arrays['test_y']):
    raise ValueError(f'{path}: test_x holds {len(arrays["test_x"])} examples '
                     f'and test_y {len(arrays["test_y"])}; expected one label '
                     'each')
  return FederatedData(train=train, test_x=arrays['test_x'],
                       test_y=arrays['test_y'], num_classes=num_classes)


def _manifest(path: str) -> dict:
  file = os.path.join(path, MANIFEST)
  try:
    with open(file) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise ValueError(f'{file}: no such file; expected a federation that '
                     'scripts/convert.py wrote') from None
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{file}: cannot be read as JSON ({e})') from None
  found = manifest.get('format') if isinstance(manifest, dict) else None
  if found != FORMAT:
    raise ValueError(f'{file}: format {found!r}; expected {FORMAT!r}')
  missing = [a for a in ARRAYS if a not in manifest.get('arrays', {})]
  if missing:
    raise ValueError(f'{file}: lists no {", ".join(missing)}; expected '
                     f'{", ".join(ARRAYS)}')
  check_num_classes(manifest.get('num_classes'))
  return manifest


def _open(path: str, name: str, expected: dict) -> np.ndarray:
  file = os.path.join(path, f'{name}.npy')
  try:
    array = np.load(file, mmap_mode='r', allow_pickle=False)
  except FileNotFoundError:
    raise ValueError(f'{file}: no such file; {MANIFEST} lists it') from None
  except (OSError, ValueError) as e:
    raise ValueError(f'{file}: not a .npy array ({e})') from None
  if (list(array.shape) != expected.get('shape')
      or array.dtype.str != expected.get('dtype')):
    raise ValueError(f'{file}: {array.dtype.str} {list(array.shape)}, but '
                     f'{MANIFEST} says {expected.get("dtype")} '
                     f'{expected.get("shape")}; the file was changed')
  return array


def _check_clients(path: str, train: ClientData) -> None:
  start, n = train.start, train.n
  rows = len(train.x)
  where = f'{path}: train.start, train.n'
  if (start.ndim != 1 or start.shape != n.shape or len(n) == 0
      or not np.issubdtype(start.dtype, np.integer)
      or not np.issubdtype(n.dtype, np.integer)):
    raise ValueError(f'{where}: expected two int arrays of one length, one '
                     'entry a client')
  if len(train.y) != rows:
    raise ValueError(f'{path}: train.x holds {rows} rows and train.y '
                     f'{len(train.y)}; expected one label row each')
  empty = np.flatnonzero(n < 1)
  if empty.size:
    raise ValueError(f'{path}: client {int(empty[0])} holds no examples; '
                     'every client needs at least one')
  outside = np.flatnonzero((start < 0) | (start.astype(np.int64) + n > rows))
  if outside.size:
    i = int(outside[0])
    raise ValueError(f'{path}: client {i} reads rows {int(start[i])}..'
                     f'{int(start[i]) + int(n[i]) - 1}, outside the {rows} '
                     'stored')


def _check_labels(path: str, name: str, num_classes: int) -> None:
  """Reads the labels through a mapping of their own, unmapped after, so
  that the check leaves no resident pages in the federation's."""
  y = np.load(os.path.join(path, f'{name}.npy'), mmap_mode='r')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{path}: {name} is {y.dtype}; expected integer labels')
  step = max(1, _CHUNK // max(1, int(np.prod(y.shape[1:]))))
  for i in range(0, len(y), step):
    chunk = np.asarray(y[i:i + step])
    bad = chunk[(chunk < 0) | (chunk >= num_classes)]
    if bad.size:
      raise ValueError(f'{path}: {name} has label {int(bad[0])}; valid '
                       f'labels: 0..{num_classes - 1} '
                       f'(num_classes={num_classes})')
