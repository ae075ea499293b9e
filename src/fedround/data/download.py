"""The standard federations' files, fetched and checked (scripts/download.py).

Each file has its source and, where its publisher gives one, the SHA-256
digest and size it must have; a mismatch is an error and the file is not
kept. FedJAX publishes digests only for its CIFAR-100 source (TFF's
compressed SQLite). For the others the digest of the first download is
written beside the file (``<file>.sha256``) and every later fetch or check
must match it (trust on first use), and the script says so.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from typing import NamedTuple

FEDJAX = 'https://storage.googleapis.com/gresearch/fedjax'
TFF = 'https://storage.googleapis.com/tff-datasets-public'


class Source(NamedTuple):
  url: str
  sha256: str | None = None  # as published, or None
  num_bytes: int | None = None


CATALOGUE: dict[str, tuple[Source, ...]] = {
    'emnist': tuple(Source(f'{FEDJAX}/emnist/federated_emnist_{s}.sqlite')
                    for s in ('train', 'test')),
    'shakespeare': tuple(Source(f'{FEDJAX}/shakespeare/shakespeare_{s}.sqlite')
                         for s in ('train', 'test')),
    'stackoverflow': tuple(
        Source(f'{FEDJAX}/stackoverflow/stackoverflow_{s}.sqlite')
        for s in ('train', 'held_out', 'test')) + (
            Source(f'{FEDJAX}/stackoverflow/stackoverflow.word_count'),),
    # fedjax.datasets.cifar100's _TFF_SQLITE_COMPRESSED_HEXDIGEST / NUM_BYTES.
    'cifar100_tff': (Source(
        f'{TFF}/cifar100.sqlite.lzma',
        '23d3916c9caa33395737ee560cc7cb77bbd05fc7b73647ee7be3a7e764172939',
        153019920),),
}


class DownloadError(RuntimeError):
  pass


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def fetch(source: Source, directory: str, mirror: str = '',
          log=print) -> str:
  """Downloads ``source`` into ``directory`` (from ``mirror`` + its file
  name instead, when given) unless a checked copy is there; returns its
  path. Raises DownloadError naming the file on any mismatch."""
  name = os.path.basename(source.url)
  path = os.path.join(directory, name)
  recorded = path + '.sha256'
  if not os.path.exists(path):
    url = f'{mirror.rstrip("/")}/{name}' if mirror else source.url
    partial = path + '.partial'
    log(f'downloading {url} -> {path}')
    try:
      with urllib.request.urlopen(url, timeout=60) as response, \
          open(partial, 'wb') as out:
        shutil.copyfileobj(response, out, 1 << 20)
    except OSError as e:
      _remove(partial)
      raise DownloadError(f'{url}: cannot download ({e})') from None
    problem = _mismatch(source, partial, recorded)
    if problem:
      _remove(partial)
      raise DownloadError(f'{url}: {problem}; the file was not kept')
    os.replace(partial, path)
  else:
    problem = _mismatch(source, path, recorded)
    if problem:
      raise DownloadError(f'{path}: {problem}; delete it to download again')
  if source.sha256 is None and not os.path.exists(recorded):
    with open(recorded, 'w') as f:
      f.write(sha256(path) + '\n')
    log(f'{path}: no published checksum; recorded its sha256 in {recorded} '
        'and later checks must match it')
  return path


def _mismatch(source: Source, path: str, recorded: str) -> str:
  """What is wrong with ``path`` ('' when nothing)."""
  size = os.path.getsize(path)
  if source.num_bytes is not None and size != source.num_bytes:
    return f'{size} bytes, but {source.num_bytes} are published'
  expected, where = source.sha256, 'published'
  if expected is None and os.path.exists(recorded):
    with open(recorded) as f:
      expected, where = f.read().strip(), f'recorded in {recorded}'
  if expected is not None:
    actual = sha256(path)
    if actual != expected:
      return f'sha256 {actual}, but {expected} is {where}'
  return ''


def _remove(path: str) -> None:
  if os.path.exists(path):
    os.remove(path)


def download(name: str, directory: str, mirror: str = '',
             log=print) -> list[str]:
  """Every file of ``name`` (a CATALOGUE key) into ``directory``."""
  if name not in CATALOGUE:
    raise DownloadError(f'unknown data set {name!r}; valid: '
                        f'{", ".join(sorted(CATALOGUE))}')
  os.makedirs(directory, exist_ok=True)
  return [fetch(source, directory, mirror, log) for source in CATALOGUE[name]]
