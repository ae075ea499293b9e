"""experiments/adaptive_fedopt.py: every task x optimizer of Reddi et al.
configures on fixture files in each task's real format (FedJAX SQLite,
TFF's compressed SQLite, a prepared TFDS set, the word counts) with the
paper's settings; each task trains two rounds under `slow`."""
import lzma

import numpy as np
import pytest

import adaptive_fedopt
from conftest import prepare_tfds, write_fedjax_sqlite, write_tff_sqlite
from fedround import train
from fedround.data.text import SHAKESPEARE_CHARACTERS


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The files each task reads, small, under their standard names."""
  root = tmp_path_factory.mktemp('fedopt')
  rng = np.random.default_rng(0)
  for split, count in (('train', 3), ('test', 2)):
    write_fedjax_sqlite(root / f'federated_emnist_{split}.sqlite', [
        (f'f{i:04d}_00'.encode(),
         {'pixels': rng.uniform(size=(6, 28, 28)).astype(np.float32),
          'label': rng.integers(0, 62, 6).astype(np.int32)})
        for i in range(count)])
    letters = np.frombuffer(SHAKESPEARE_CHARACTERS, np.uint8)
    write_fedjax_sqlite(root / f'shakespeare_{split}.sqlite', [
        (f'PLAY_{i}'.encode(), {'snippets': np.array(
            [bytes(rng.choice(letters, 100)) for _ in range(2)], object)})
        for i in range(count)])
    write_fedjax_sqlite(root / f'stackoverflow_{split}.sqlite', [
        (f'{i}'.encode(), {'tokens': np.array(
            [b'w1 w2 unknown w3', b'w9999 w0'], object)})
        for i in range(count)])
  (root / 'stackoverflow.word_count').write_text(
      ''.join(f'w{i} {10_000 - i}\n' for i in range(10_000)))
  cifar = {(split, f'{i}'): [
      {'image': rng.integers(0, 256, 32 * 32 * 3).tolist(),
       'label': [int(rng.integers(0, 100))], 'coarse_label': [0]}
      for _ in range(4)] for split, count in (('train', 3), ('test', 1))
           for i in range(count)}
  write_tff_sqlite(root / 'cifar100.sqlite', cifar)
  (root / 'cifar100.sqlite.lzma').write_bytes(
      lzma.compress((root / 'cifar100.sqlite').read_bytes()))
  (root / 'cifar100.sqlite').unlink()
  image = lambda i: {'image': rng.integers(0, 256, (32, 32, 3), np.uint8),
                     'label': i % 10, 'id': f'{i}'}
  prepare_tfds(root, 'cifar10', {'train': [image(i) for i in range(60)],
                                 'test': [image(i) for i in range(10)]})
  return root


def _config(data_dir, task, optimizer):
  config = adaptive_fedopt.get_config(
      f'task={task},optimizer={optimizer},data_dir={data_dir}')
  if task == 'cifar10':  # 60 fixture examples, not 50,000
    config.data.num_clients = 4
  config.clients_per_round = 2  # the fixtures hold 3 or 4 clients
  return config


@pytest.mark.parametrize('task', list(adaptive_fedopt.RATES))
def test_every_optimizer_configures_on_the_real_formats(data_dir, task):
  for optimizer in adaptive_fedopt.OPTIMIZERS:
    train.check(_config(data_dir, task, optimizer))


def test_the_papers_settings():
  """Cohort, batch, rounds and a few tuned rates as the authors list them
  (10^x, google-research/federated optimization/docs/hyperparameters.md)."""
  get = lambda arg: adaptive_fedopt.get_config(arg)
  so = get('task=stackoverflow,optimizer=fedadam')
  assert (so.clients_per_round, so.client.batch_size, so.rounds) == (
      50, 16, 1500)
  assert so.client.learning_rate == pytest.approx(10 ** -0.5)
  assert so.server.learning_rate == pytest.approx(10 ** -2)
  assert so.server.optimizer == 'fedadam(eps=1e-05)'
  emnist = get('task=emnist,optimizer=fedyogi')
  assert (emnist.clients_per_round, emnist.client.batch_size,
          emnist.rounds, emnist.client.local_epochs) == (10, 20, 1500, 1)
  assert emnist.server.learning_rate == pytest.approx(10 ** -2.5)
  shakespeare = get('task=shakespeare,optimizer=fedavg')
  assert (shakespeare.client.batch_size, shakespeare.rounds,
          shakespeare.server.optimizer) == (4, 1200, 'sgd')
  assert shakespeare.client.learning_rate == 1.0
  cifar100 = get('task=cifar100,optimizer=fedavgm')
  assert cifar100.server.optimizer == 'fedavgm(momentum=0.9)'
  assert cifar100.rounds == 4000
  with pytest.raises(ValueError, match='task must be one of emnist'):
    get('task=mnist')


@pytest.mark.slow
@pytest.mark.parametrize('task', list(adaptive_fedopt.RATES))
def test_each_task_trains_on_its_fixture(data_dir, tmp_path, task):
  config = _config(data_dir, task, 'fedadam')
  config.rounds = config.eval_every = config.checkpoint_every = 2
  config.progress = False
  result = train.run(config, str(tmp_path))
  assert np.isfinite(result.summary['final_test_loss'])
