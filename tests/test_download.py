"""scripts/download.py against a loopback HTTP server: files arrive and are
checked; a wrong size or digest is an error and nothing is kept; a file
without a published digest is pinned to its first download."""
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from fedround.data import download as download_lib
from fedround.data.download import CATALOGUE, DownloadError, Source, fetch


@pytest.fixture
def server(tmp_path):
  """(serving directory, base URL) of a loopback HTTP server."""
  served = tmp_path / 'served'
  served.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(served))
  handler.log_message = lambda *args: None
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield served, f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()


def test_a_published_checksum_is_verified(server, tmp_path):
  served, url = server
  payload = b'federated bytes' * 1000
  (served / 'data.bin').write_bytes(payload)
  good = Source(f'{url}/data.bin', hashlib.sha256(payload).hexdigest(),
                len(payload))
  quiet = lambda *_: None
  for directory in ('a', 'b'):
    os.makedirs(tmp_path / directory)
  path = fetch(good, str(tmp_path / 'a'), log=quiet)
  assert open(path, 'rb').read() == payload
  assert not os.path.exists(path + '.sha256')  # published: nothing pinned
  for wrong, message in ((good._replace(num_bytes=7), r'15000 bytes, but 7'),
                         (good._replace(sha256='0' * 64),
                          r'sha256 [0-9a-f]{64}, but 0{64} is published')):
    with pytest.raises(DownloadError, match=message + '.*not kept'):
      fetch(wrong, str(tmp_path / 'b'), log=quiet)
    assert os.listdir(tmp_path / 'b') == []
  with pytest.raises(DownloadError, match=r'missing.bin: cannot download '
                     r'\(HTTP Error 404'):
    fetch(Source(f'{url}/missing.bin'), str(tmp_path / 'b'), log=quiet)
  assert os.listdir(tmp_path / 'b') == []


def test_cli_pins_unpublished_files_and_rejects_changes(server, tmp_path):
  served, url = server
  for source in CATALOGUE['shakespeare']:
    (served / os.path.basename(source.url)).write_bytes(b'sqlite?')
  target = tmp_path / 'shakespeare'
  command = [sys.executable, os.path.join(ROOT, 'scripts', 'download.py'),
             'shakespeare', str(target), '--mirror', url]
  first = subprocess.run(command, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr
  assert 'no published checksum; recorded its sha256' in first.stdout
  train_file = target / 'shakespeare_train.sqlite'
  assert train_file.read_bytes() == b'sqlite?'
  assert (target / 'shakespeare_train.sqlite.sha256').read_text().strip() \
      == hashlib.sha256(b'sqlite?').hexdigest()
  train_file.write_bytes(b'changed')  # a damaged or replaced copy
  second = subprocess.run(command, capture_output=True, text=True)
  assert second.returncode == 1
  assert second.stderr.count('\n') == 1
  assert 'is recorded in' in second.stderr and 'delete it' in second.stderr


def test_cifar100_has_its_published_digest_and_bad_names_fail(tmp_path):
  (source,) = CATALOGUE['cifar100_tff']
  assert source.num_bytes == 153019920 and len(source.sha256) == 64
  with pytest.raises(DownloadError, match="unknown data set 'mnist'; valid: "
                     'cifar100_tff, emnist, shakespeare, stackoverflow'):
    download_lib.download('mnist', str(tmp_path))
