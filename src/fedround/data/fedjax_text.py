"""FedJAX's text federations in its SQLite files, as next-token sequences
(data.text): Shakespeare (``snippets``: 715 train clients, 90 ids) and
Stack Overflow (``tokens``: 342,477 train clients, 10,004 ids with the
standard vocabulary). Use them with ``config.task='next_token'``.
"""
from __future__ import annotations

import numpy as np

from fedround.data.federated import ClientData, FederatedData
from fedround.data.fedjax_sqlite import check_features, client_features
from fedround.data.text import (SHAKESPEARE_VOCABULARY, WordTokenizer,
                                read_vocabulary, shakespeare_sequences)


def fedjax_shakespeare(train_path: str, test_path: str,
                       sequence_length: int = 80) -> FederatedData:
  """Each train client's snippets as sequences of ``sequence_length``
  characters (FedJAX and Reddi et al.: 80); the test clients' pooled."""
  _check_length('sequence_length', sequence_length)
  split = lambda path: _split(path, 'snippets', lambda texts:
                              shakespeare_sequences(texts, sequence_length))
  return _federation(split(train_path), split(test_path),
                     SHAKESPEARE_VOCABULARY)


def fedjax_stackoverflow(train_path: str, test_path: str, vocab_path: str,
                         vocab_size: int = 10_000, max_length: int = 20,
                         max_posts: int = 0) -> FederatedData:
  """Each train client's posts as sequences of ``max_length`` words (Reddi
  et al.: 20) over the ``vocab_size`` most frequent words of
  ``vocab_path`` (FedJAX's stackoverflow.word_count), its first
  ``max_posts`` only when > 0 (Reddi et al.'s code: 1000); the test
  clients' pooled."""
  _check_length('max_length', max_length)
  _check_length('vocab_size', vocab_size)
  if isinstance(max_posts, bool) or not isinstance(max_posts, int) or (
      max_posts < 0):
    raise ValueError(f'max_posts must be an integer >= 0, got {max_posts!r}')
  tokenizer = WordTokenizer(read_vocabulary(vocab_path, vocab_size))
  split = lambda path, cap: _split(path, 'tokens', lambda texts:
                                   tokenizer.sequences(texts[:cap or None],
                                                       max_length))
  return _federation(split(train_path, max_posts), split(test_path, 0),
                     tokenizer.size)


def _check_length(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}')


def _split(path, feature, sequences):
  """[(x, y)] of every client of one file: ``sequences`` of its texts."""
  clients = []
  for where, features, count in client_features(path):
    check_features(where, features, (feature,), 'a FedJAX text file')
    texts = features[feature]
    if not (isinstance(texts, np.ndarray) and texts.ndim == 1
            and all(isinstance(t, bytes) for t in texts)):
      raise ValueError(f'{where}: {feature!r} is not an array of byte '
                       'strings')
    if len(texts) != count:
      raise ValueError(f'{where} holds {len(texts)} {feature!r} but '
                       f'num_examples says {count}')
    if not count:
      raise ValueError(f'{where} holds no examples; every client needs at '
                       'least one')
    clients.append(sequences(list(texts)))
  return clients


def _federation(train, test, vocabulary):
  concatenate = lambda i: np.concatenate([c[i] for c in test])
  return FederatedData(
      train=ClientData.from_clients([x for x, _ in train],
                                    [y for _, y in train], np.int32),
      test_x=concatenate(0), test_y=concatenate(1), num_classes=vocabulary)
