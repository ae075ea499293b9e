"""fedround's memory-mapped federations (data.name='npy'):
scripts/convert.py writes a config's federation, opening it maps the files
and training on it from the host equals training on the federation in
memory; a file that does not match its manifest fails in one line."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import fedavg_synthetic
from conftest import ROOT
from fedround import train
from fedround.data import arrays
from fedround.registry import ConfigError


def _config(data=None):
  config = fedavg_synthetic.get_config()
  config.rounds, config.eval_every, config.checkpoint_every = 6, 3, 3
  config.progress, config.shard = False, False
  config.client.local_epochs = 1
  if data is not None:
    config.data = data
  config.data.placement = 'host'
  return config


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  out = tmp_path_factory.mktemp('synthetic_npy')
  subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'convert.py'),
                  '--config', os.path.join(ROOT, 'experiments',
                                           'fedavg_synthetic.py'),
                  '--out', str(out)], check=True, capture_output=True)
  return out


def test_the_converted_federation_is_mapped_and_equal(converted):
  data = train.load_data(_config({'name': 'npy', 'path': str(converted)}))
  original = train.load_federation(fedavg_synthetic.get_config())
  assert isinstance(data.train.x, np.memmap)
  assert 'on disk (memory-mapped)' in data.describe()
  for got, want in zip(jax.tree.leaves(data), jax.tree.leaves(original)):
    np.testing.assert_array_equal(got, want)
  assert data.num_classes == original.num_classes
  assert data.max_examples == original.max_examples


def test_host_training_on_the_mapped_files_equals_memory(converted, tmp_path):
  mapped = train.run(_config({'name': 'npy', 'path': str(converted)}),
                     str(tmp_path / 'mapped'))
  memory = train.run(_config(), str(tmp_path / 'memory'))
  for a, b in zip(jax.tree.leaves(mapped.state.params),
                  jax.tree.leaves(memory.state.params)):
    np.testing.assert_array_equal(a, b)
  assert mapped.summary['chunks_prefetched'] == 1


def _copy(converted, tmp_path):
  out = tmp_path / 'copy'
  arrays.save(arrays.npy(str(converted)), str(out))
  return out


def _rewrite(name, change):
  def edit(out):
    array = np.load(out / f'{name}.npy')
    np.save(out / f'{name}.npy', change(array))
  return edit


def _manifest(change):
  def edit(out):
    manifest = json.loads((out / arrays.MANIFEST).read_text())
    change(manifest)
    (out / arrays.MANIFEST).write_text(json.dumps(manifest))
  return edit


@pytest.mark.parametrize('edit, message', [
    (lambda out: os.remove(out / arrays.MANIFEST),
     'federation.json: no such file; expected a federation that '
     'scripts/convert.py wrote'),
    (_manifest(lambda m: m.update(format='v0')),
     "format 'v0'; expected 'fedround-npy-1'"),
    (lambda out: os.remove(out / 'test_y.npy'),
     'test_y.npy: no such file; federation.json lists it'),
    (_rewrite('train.x', lambda x: x[:-1]),
     r'train.x.npy: <f4 \[\d+, 60\], but federation.json says <f4 '
     r'\[\d+, 60\]; the file was changed'),
    (lambda out: (out / 'train.y.npy').write_bytes(b'not an array'),
     'train.y.npy: not a .npy array'),
])
def test_files_that_do_not_match_fail_in_one_line(converted, tmp_path, edit,
                                                 message):
  out = _copy(converted, tmp_path)
  edit(out)
  with pytest.raises(ConfigError, match=message) as error:
    train.check(_config({'name': 'npy', 'path': str(out)}))
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('change, message', [
    (lambda d: d.replace(train=d.train.replace(
        n=np.where(np.arange(d.num_clients) == 3, 0, d.train.n))),
     'client 3 holds no examples'),
    (lambda d: d.replace(train=d.train.replace(
        start=d.train.start + len(d.train.y) - 1)),
     r'client 0 reads rows \d+\.\.\d+, outside the \d+ stored'),
    (lambda d: d.replace(test_y=np.asarray(d.test_y) + d.num_classes),
     r'test_y has label \d+; valid labels: 0..9 \(num_classes=10\)'),
])
def test_inconsistent_federations_are_refused(converted, tmp_path, change,
                                              message):
  arrays.save(change(arrays.npy(str(converted))), str(tmp_path / 'bad'))
  with pytest.raises(ConfigError, match=message):
    train.check(_config({'name': 'npy', 'path': str(tmp_path / 'bad')}))
