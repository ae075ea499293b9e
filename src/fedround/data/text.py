"""Text to next-token sequences, as FedJAX prepares its text federations.

Both vocabularies reserve 0 = PAD, 1 = BOS, 2 = EOS and put OOV last, so
``config.task='next_token'`` scores them with its defaults.

- Shakespeare (fedjax.datasets.shakespeare.preprocess_client): a client's
  snippets are joined into one sequence of character ids, each snippet as
  BOS, its characters, EOS, then cut into inputs and targets (shifted by
  one) of ``sequence_length``, the last one padded. 86 characters: a
  vocabulary of 90.
- Stack Overflow (fedjax.datasets.stackoverflow.DefaultWordTokenizer): each
  post's space-separated tokens become BOS, word ids, EOS; inputs and
  targets (shifted by one) are truncated or padded to ``max_length``. The
  words are the ``vocab_size`` most frequent ones, read from the word-count
  file TFF and FedJAX publish (one ``word count`` per line, most frequent
  first): a vocabulary of vocab_size + 4.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PAD, BOS, EOS = 0, 1, 2
RESERVED = 3
SHAKESPEARE_CHARACTERS = (
    b'dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:\naeimquy'
    b'AEIMQUY]!%)-159\r')
SHAKESPEARE_VOCABULARY = RESERVED + len(SHAKESPEARE_CHARACTERS) + 1


def _character_table() -> np.ndarray:
  """Byte -> id: the characters from 3 on, every other byte OOV (last)."""
  table = np.full(256, SHAKESPEARE_VOCABULARY - 1, np.int32)
  for i, byte in enumerate(SHAKESPEARE_CHARACTERS):
    table[byte] = RESERVED + i
  return table


_CHARACTERS = _character_table()


def shakespeare_sequences(snippets: Sequence[bytes], sequence_length: int
                          ) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets), each int32 [M, sequence_length], of one client."""
  joined = np.concatenate([
      np.concatenate([[BOS], _CHARACTERS[np.frombuffer(s, np.uint8)], [EOS]])
      for s in snippets]).astype(np.int32)
  count = len(joined) - 1
  length = -(-count // sequence_length) * sequence_length
  inputs = np.full(length, PAD, np.int32)
  targets = np.full(length, PAD, np.int32)
  inputs[:count], targets[:count] = joined[:-1], joined[1:]
  return (inputs.reshape(-1, sequence_length),
          targets.reshape(-1, sequence_length))


def read_vocabulary(path: str, size: int) -> list[str]:
  """The first ``size`` words of a word-count file."""
  words = []
  try:
    with open(path, encoding='utf-8') as f:
      for number, line in enumerate(f, 1):
        if len(words) == size:
          break
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
          raise ValueError(f'{path}: line {number} is {line.strip()!r}; '
                           "expected 'word count'")
        words.append(fields[0])
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: cannot read the word counts ({e})') from None
  if len(words) < size:
    raise ValueError(f'{path} lists {len(words)} words; vocab_size asks for '
                     f'{size}')
  return words


class WordTokenizer:
  """Words -> ids from RESERVED on, any other word OOV (the last id)."""

  def __init__(self, vocabulary: Sequence[str]):
    self.ids = {w: RESERVED + i for i, w in enumerate(vocabulary)}
    self.size = RESERVED + len(self.ids) + 1

  def sequences(self, posts: Sequence[bytes], max_length: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each int32 [len(posts), max_length]."""
    oov = self.size - 1
    inputs = np.full((len(posts), max_length), PAD, np.int32)
    targets = np.full((len(posts), max_length), PAD, np.int32)
    for row, post in enumerate(posts):
      words = post.decode('utf-8', errors='replace').split(' ')
      ids = [BOS] + [self.ids.get(w, oov) for w in words] + [EOS]
      ids = np.array(ids[:max_length + 1], np.int32)
      inputs[row, :len(ids) - 1] = ids[:-1]
      targets[row, :len(ids) - 1] = ids[1:]
    return inputs, targets
