"""LEAF's JSON federations (Caldas et al., "LEAF: A Benchmark for Federated
Settings", NeurIPS 2019 Workshop on Federated Learning; the files its
scripts in github.com/TalwalkarLab/leaf write).

A data set directory holds ``train/`` and ``test/``, each with JSON files of

    {"users": [u, ...], "num_samples": [n_u, ...],
     "user_data": {u: {"x": [row, ...], "y": [label, ...]}, ...}}

(optionally "hierarchies"). This reader takes classification data with
numeric rows: FEMNIST (784 values a row, 62 classes) and LEAF's Synthetic.
Shakespeare and Sent140 hold text and need a next-token or text task, which
fedround does not have yet.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from fedround.data.federated import FederatedData
from fedround.data.files import check_labels, check_num_classes, federation

KEYS = ('users', 'num_samples', 'user_data')


def leaf(path: str, num_classes: int, example_shape: Sequence[int] = (),
         invert: bool = False) -> FederatedData:
  """Every user of ``path/train`` as a client (files in name order, users in
  file order), their ``path/test`` examples pooled as the test split. Each
  row of x is reshaped to ``example_shape`` (FEMNIST: ``(28, 28, 1)``;
  empty: as stored); labels must lie in 0..num_classes - 1. With
  ``invert``, x becomes 1 - x (FEMNIST's rows are dark strokes on a white
  page, as FedJAX's EMNIST before its preprocessing)."""
  check_num_classes(num_classes)
  if not os.path.isdir(path):
    raise ValueError(f'{path}: no such directory; expected a LEAF data set '
                     'directory holding train/ and test/')
  shape = tuple(example_shape)
  train, test = (_read_split(os.path.join(path, split), num_classes, shape)
                 for split in ('train', 'test'))
  return federation(train, test, num_classes, invert)


def _read_split(directory: str, num_classes: int, shape: tuple[int, ...]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """'{directory}: user {u}' -> (x, y) over the split's JSON files."""
  names = (sorted(n for n in os.listdir(directory) if n.endswith('.json'))
           if os.path.isdir(directory) else [])
  if not names:
    raise ValueError(f'{directory}: no LEAF .json files; expected the '
                     f'{os.path.basename(directory)}/ split of a LEAF data '
                     'set')
  users = {}
  for name in names:
    file = os.path.join(directory, name)
    for user, xy in _read_file(file, num_classes, shape).items():
      where = f'{directory}: user {user!r}'
      if where in users:
        raise ValueError(f'{file}: user {user!r} is also in another file of '
                         f'{directory}; each user must appear once')
      users[where] = xy
  return users


def _read_file(file: str, num_classes: int, shape: tuple[int, ...]
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  try:
    with open(file, encoding='utf-8') as f:
      blob = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{file}: not JSON ({e.msg} at line {e.lineno})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{file}: cannot be read as UTF-8 JSON ({e})') from None
  missing = [k for k in KEYS if not isinstance(blob, dict) or k not in blob]
  if missing:
    raise ValueError(f'{file}: expected the LEAF keys {", ".join(KEYS)}; '
                     f'missing {", ".join(missing)}')
  users, counts, data = (blob[k] for k in KEYS)
  if not (isinstance(users, list) and all(isinstance(u, str) for u in users)
          and isinstance(counts, list) and isinstance(data, dict)):
    raise ValueError(f'{file}: expected users a list of names, num_samples a '
                     'list of counts and user_data a dict')
  if len(users) != len(counts):
    raise ValueError(f'{file}: {len(users)} users but {len(counts)} '
                     'num_samples; expected one count per user')
  out = {}
  for user, count in zip(users, counts):
    if user in out:
      raise ValueError(f'{file}: user {user!r} is listed twice in users')
    if user not in data:
      raise ValueError(f'{file}: user {user!r} has no entry in user_data')
    x, y = _user_arrays(file, user, data[user], shape)
    check_labels(f'{file}: user {user!r}', y, num_classes)
    if len(y) != count:
      raise ValueError(f'{file}: user {user!r} holds {len(y)} examples but '
                       f'num_samples says {count}')
    out[user] = (x, y.astype(np.int32))
  return out


def _user_arrays(file, user, entry, shape):
  """A user's x as float32 rows of ``shape`` and y as int64."""
  if not isinstance(entry, dict) or 'x' not in entry or 'y' not in entry:
    raise ValueError(f'{file}: user {user!r}: expected {{"x": [...], '
                     '"y": [...]}} in user_data')
  try:
    x = np.asarray(entry['x'], np.float32)
  except (TypeError, ValueError):
    raise ValueError(f'{file}: user {user!r}: x must be rows of numbers of '
                     'one length (text data sets need a text task)') from None
  y = np.asarray(entry['y'], object)
  if y.ndim != 1 or not all(isinstance(v, int) and not isinstance(v, bool)
                            for v in y):
    raise ValueError(f'{file}: user {user!r}: y must be a list of integer '
                     'labels')
  if len(x) != len(y):
    raise ValueError(f'{file}: user {user!r} has {len(x)} x rows and '
                     f'{len(y)} labels')
  if shape and len(x):
    size = int(np.prod(x.shape[1:]))
    if size != int(np.prod(shape)):
      raise ValueError(f'{file}: user {user!r}: rows of {size} values cannot '
                       f'be shaped {shape} (data.example_shape)')
    x = x.reshape((len(x), *shape))
  return x, y.astype(np.int64)
