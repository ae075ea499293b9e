"""LEAF's JSON federations (Caldas et al., "LEAF: A Benchmark for Federated
Settings", NeurIPS 2019 Workshop on Federated Learning; the files its
scripts in github.com/TalwalkarLab/leaf write).

A data set directory holds ``train/`` and ``test/``, each with JSON files of

    {"users": [u, ...], "num_samples": [n_u, ...],
     "user_data": {u: {"x": [row, ...], "y": [label, ...]}, ...}}

(optionally "hierarchies"). ``encoding`` says what a row is, as LEAF's
models read it (their ``process_x`` / ``process_y``):

- ``numbers``: rows of numbers and integer labels (FEMNIST's 784 pixels,
  62 classes; LEAF's Synthetic).
- ``characters``: Shakespeare. x is a string of 80 characters, y the
  character after it; both become indices into LEAF's 80 letters
  (``models/utils/language_utils.py``: ``word_to_indices``,
  ``letter_to_vec``), so num_classes is 80. A character outside them is an
  error (LEAF's lookup would give -1).
- ``words``: Sent140. x is the tweet's CSV fields ``[id, date, query, user,
  text]`` and y its 0/1 sentiment. The text is split as LEAF's
  ``split_line`` does and its first ``max_words`` words become ids in the
  vocabulary of ``vocabulary_path`` (LEAF's ``embs.json``, whose ``vocab``
  lists GloVe's words, or a GloVe ``.txt``), unknown words and padding as
  the id after the last word (``line_to_indices``).
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

import numpy as np

from fedround.data.federated import FederatedData
from fedround.data.files import check_labels, check_num_classes, federation

KEYS = ('users', 'num_samples', 'user_data')
LETTERS = ('\n !"&\'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]'
           'abcdefghijklmnopqrstuvwxyz}')
ENCODINGS = ('numbers', 'characters', 'words')


def leaf(path: str, num_classes: int, example_shape: Sequence[int] = (),
         invert: bool = False, encoding: str = 'numbers',
         vocabulary_path: str = '', max_words: int = 25) -> FederatedData:
  """Every user of ``path/train`` as a client (files in name order, users in
  file order), their ``path/test`` examples pooled as the test split. Rows
  are read by ``encoding`` (above). ``numbers``: each row of x is reshaped
  to ``example_shape`` (FEMNIST: ``(28, 28, 1)``; empty: as stored); with
  ``invert``, x becomes 1 - x (FEMNIST's rows are dark strokes on a white
  page, as FedJAX's EMNIST before its preprocessing). Labels must lie in
  0..num_classes - 1."""
  check_num_classes(num_classes)
  if encoding not in ENCODINGS:
    raise ValueError(f'encoding must be one of {", ".join(ENCODINGS)}, got '
                     f'{encoding!r}')
  if not os.path.isdir(path):
    raise ValueError(f'{path}: no such directory; expected a LEAF data set '
                     'directory holding train/ and test/')
  if invert and encoding != 'numbers':
    raise ValueError(f"invert applies to encoding 'numbers' only, not "
                     f'{encoding!r}')
  if encoding == 'numbers':
    read = _numbers(tuple(example_shape))
  elif encoding == 'characters':
    read = _characters
  else:
    if not isinstance(max_words, int) or max_words < 1:
      raise ValueError(f'max_words must be an integer >= 1, got '
                       f'{max_words!r}')
    read = _words(read_vocabulary(vocabulary_path), max_words)
  train, test = (_read_split(os.path.join(path, split), num_classes, read)
                 for split in ('train', 'test'))
  return federation(train, test, num_classes, invert)


def read_vocabulary(path: str) -> dict[str, int]:
  """Word -> id from LEAF's ``embs.json`` (its ``vocab`` list) or a GloVe
  ``.txt`` (a word and its vector a line), ids in file order."""
  if not path:
    raise ValueError("vocabulary_path: encoding 'words' needs LEAF's "
                     'embs.json or a GloVe .txt')
  try:
    with open(path, encoding='utf-8') as f:
      if path.endswith('.json'):
        words = json.load(f).get('vocab')
      else:
        words = [line.split(' ', 1)[0] for line in f if line.strip()]
  except (OSError, UnicodeDecodeError, json.JSONDecodeError,
          AttributeError) as e:
    raise ValueError(f'{path}: cannot be read as a vocabulary ({e}); '
                     "expected LEAF's embs.json or a GloVe .txt") from None
  if not isinstance(words, list) or not words or not all(
      isinstance(w, str) for w in words):
    raise ValueError(f'{path}: expected a non-empty list of words (LEAF\'s '
                     'embs.json "vocab")')
  # A repeated word keeps its last id, as LEAF's get_word_emb_arr.
  return {w: i for i, w in enumerate(words)}


Read = Callable[[str, list, list], tuple[np.ndarray, np.ndarray]]


def _read_split(directory: str, num_classes: int, read: Read
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
    for user, xy in _read_file(file, num_classes, read).items():
      where = f'{directory}: user {user!r}'
      if where in users:
        raise ValueError(f'{file}: user {user!r} is also in another file of '
                         f'{directory}; each user must appear once')
      users[where] = xy
  return users


def _read_file(file: str, num_classes: int, read: Read
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
    entry = data[user]
    where = f'{file}: user {user!r}'
    if not isinstance(entry, dict) or 'x' not in entry or 'y' not in entry:
      raise ValueError(f'{where}: expected {{"x": [...], "y": [...]}} in '
                       'user_data')
    if not isinstance(entry['x'], list) or not isinstance(entry['y'], list):
      raise ValueError(f'{where}: x and y must be lists')
    if len(entry['x']) != len(entry['y']):
      raise ValueError(f'{where} has {len(entry["x"])} x rows and '
                       f'{len(entry["y"])} labels')
    x, y = read(where, entry['x'], entry['y'])
    check_labels(where, y, num_classes)
    if len(y) != count:
      raise ValueError(f'{where} holds {len(y)} examples but num_samples '
                       f'says {count}')
    out[user] = (x, y.astype(np.int32))
  return out


def _numbers(shape: tuple[int, ...]) -> Read:
  """Rows of numbers as float32 of ``shape``; integer labels."""
  def read(where, xs, ys):
    try:
      x = np.asarray(xs, np.float32)
    except (TypeError, ValueError):
      raise ValueError(f'{where}: x must be rows of numbers of one length '
                       "(Shakespeare and Sent140 need data.encoding "
                       "'characters' or 'words')") from None
    if shape and len(x):
      size = int(np.prod(x.shape[1:]))
      if size != int(np.prod(shape)):
        raise ValueError(f'{where}: rows of {size} values cannot be shaped '
                         f'{shape} (data.example_shape)')
      x = x.reshape((len(x), *shape))
    return x, _integer_labels(where, ys)
  return read


def _integer_labels(where: str, ys: list) -> np.ndarray:
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in ys):
    raise ValueError(f'{where}: y must be a list of integer labels')
  return np.asarray(ys, np.int64).reshape(len(ys))


_LETTER_IDS = {c: i for i, c in enumerate(LETTERS)}


def _letter_ids(where: str, text) -> list[int]:
  if not isinstance(text, str):
    raise ValueError(f'{where}: expected strings of characters, got '
                     f'{type(text).__name__}')
  try:
    return [_LETTER_IDS[c] for c in text]
  except KeyError as e:
    raise ValueError(f'{where}: character {e.args[0]!r} is not one of '
                     f"LEAF's {len(LETTERS)} letters") from None


def _characters(where, xs, ys):
  """Shakespeare: strings of one length -> int32 letter ids; the next
  character -> its letter id."""
  rows = [_letter_ids(where, text) for text in xs]
  if len({len(r) for r in rows}) > 1:
    raise ValueError(f'{where}: x strings of lengths '
                     f'{sorted({len(r) for r in rows})}; expected one length')
  labels = []
  for c in ys:
    ids = _letter_ids(where, c)
    if len(ids) != 1:
      raise ValueError(f'{where}: y must be single characters, got {c!r}')
    labels += ids
  return (np.asarray(rows, np.int32).reshape(len(rows), -1),
          np.asarray(labels, np.int64))


def _words(vocabulary: dict[str, int], max_words: int) -> Read:
  """Sent140: each row's text (its fifth field) -> ``max_words`` word ids,
  unknown words and padding len(vocabulary); 0/1 labels."""
  unknown = len(vocabulary)  # LEAF's unk_id

  def read(where, xs, ys):
    rows = []
    for fields in xs:
      if not (isinstance(fields, list) and len(fields) == 5
              and isinstance(fields[4], str)):
        raise ValueError(f'{where}: x rows must be the 5 CSV fields [id, '
                         'date, query, user, text] of LEAF\'s Sent140')
      words = re.findall(r"[\w']+|[.,!?;]", fields[4])[:max_words]
      ids = [vocabulary.get(w, unknown) for w in words]
      rows.append(ids + [unknown] * (max_words - len(ids)))
    return (np.asarray(rows, np.int32).reshape(len(rows), max_words),
            _integer_labels(where, ys))
  return read
