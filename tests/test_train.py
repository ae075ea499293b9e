"""run(config, workdir): resumption, the default jobs' accuracy, the CLI and
bad input."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import fedavg_digits
import fedavg_synthetic
from fedround import train
from fedround.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_synthetic(rounds):
  config = fedavg_synthetic.get_config()
  config.rounds = rounds
  config.eval_every = 2
  config.checkpoint_every = 4
  config.client.local_epochs = 2
  config.progress = False
  return config


def test_resumed_run_is_bit_identical(tmp_path):
  stopped, fresh = str(tmp_path / 'stopped'), str(tmp_path / 'fresh')
  first = train.run(_small_synthetic(4), stopped)
  assert first.summary['resumed_from'] == 0
  resumed = train.run(_small_synthetic(10), stopped)
  assert resumed.summary['resumed_from'] == 4
  straight = train.run(_small_synthetic(10), fresh)
  for a, b in zip(jax.tree.leaves(resumed.state),
                  jax.tree.leaves(straight.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(os.path.join(stopped, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['round'] for r in rows] == list(range(1, 11))
  with open(os.path.join(fresh, 'metrics.jsonl')) as f:
    assert [json.loads(line) for line in f] == rows
  assert os.path.exists(os.path.join(stopped, 'config.json'))


def test_resume_refuses_a_changed_config_but_not_a_new_default_field(
    tmp_path):
  train.run(_small_synthetic(2), str(tmp_path))
  path = os.path.join(tmp_path, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  del saved['client']['algorithm']  # a run from before the field existed
  with open(path, 'w') as f:
    json.dump(saved, f)
  assert train.run(_small_synthetic(4), str(tmp_path)).summary[
      'resumed_from'] == 2
  changed = _small_synthetic(6)
  changed.client.algorithm = 'scaffold'
  with pytest.raises(ConfigError, match='differs in client.algorithm; only '
                     'rounds'):
    train.run(changed, str(tmp_path))


def test_eval_train_scores_the_mean_client_objective(tmp_path):
  """global_train_loss is (1/N) sum_i of client i's mean loss on its own
  examples, computed here client by client."""
  config = _small_synthetic(2)
  config.eval_train = True
  result = train.run(config, str(tmp_path))
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    last = [json.loads(line) for line in f][-1]
  experiment = train.build(config)
  data, params = train.load_data(config), result.state.params
  losses, accuracies = [], []
  for x, y in map(data.train.client, range(data.num_clients)):
    n = len(y)
    logits = np.asarray(experiment.model.apply(params, x), np.float64)
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
        1, keepdims=True)) - logits.max(1, keepdims=True)
    losses.append(-log_p[np.arange(n), y].mean())
    accuracies.append((logits.argmax(1) == y).mean())
  assert last['global_train_loss'] == pytest.approx(np.mean(losses),
                                                    rel=1e-5)
  assert last['global_train_accuracy'] == pytest.approx(np.mean(accuracies))
  # Sample-weighted and client-uniform means differ on this skewed data.
  pooled = np.average(losses, weights=data.n)
  assert abs(pooled - np.mean(losses)) > 1e-3


@pytest.mark.parametrize('job, rounds, bound', [
    pytest.param(fedavg_synthetic, None, 0.85, marks=pytest.mark.slow),
    pytest.param(fedavg_digits, None, 0.9, marks=pytest.mark.slow),
    (fedavg_synthetic, 50, 0.78),
    (fedavg_digits, 40, 0.78),
])
def test_default_jobs_reach_their_stated_accuracy(job, rounds, bound,
                                                  tmp_path):
  """The figures the README states for `make run` (>= 0.85 after its 200
  rounds) and the digits job (>= 0.9 after 100), at full size under
  `slow`. make test runs both jobs through the same code for their first
  50 and 40 rounds, where they measured 0.822 and 0.836: >= 0.78. On one
  device, as the README's runs (sharded == unsharded is test_round's)."""
  config = job.get_config()
  config.progress = False
  config.shard = False
  config.rounds = rounds or config.rounds
  summary = train.run(config, str(tmp_path)).summary
  assert summary['final_test_accuracy'] >= bound, summary


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, 'scripts/train.py', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_cli_variant_and_overrides(tmp_path):
  out = _cli('--config', 'experiments/fedavg_synthetic.py:alpha=1,beta=1',
             '--workdir', str(tmp_path), '--config.rounds=3',
             '--config.eval_every=3', '--config.client.local_epochs=1',
             '--config.data.placement=host', '--config.progress=False')
  assert out.returncode == 0, out.stderr
  assert 'final test accuracy' in out.stdout
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['rounds'] == 3
  assert saved['data']['alpha'] == 1.0 and saved['data']['beta'] == 1.0
  # fedround's own data options are fields of every experiment's data.
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert saved['data']['placement'] == summary['placement'] == 'host'


def test_cli_rejects_unknown_field(tmp_path):
  out = _cli('--config', 'experiments/fedavg_synthetic.py', '--workdir',
             str(tmp_path), '--config.rouns=3')
  assert out.returncode != 0
  assert 'rouns' in out.stderr
  out = _cli('--config', 'experiments/fedavg_synthetic.py:alpah=1',
             '--workdir', str(tmp_path))
  assert out.returncode != 0
  assert 'alpah' in out.stderr and 'alpha' in out.stderr


@pytest.mark.parametrize('field, value, expected', [
    ('model', 'resnet9000', ['config.model', 'resnet9000', 'logistic', 'cnn']),
    ('aggregator', 'krumm', ['config.aggregator', 'krumm', 'weighted_mean']),
    ('participation', 'sometimes', ['config.participation', 'uniform']),
    ('client.optimizer', 'sgdd', ['config.client.optimizer', 'sgd', 'adam']),
    ('model', 'mlp(widths=(3,))', ['config.model', 'widths', 'hidden']),
    ('clients_per_round', 31, ['config.clients_per_round', '1..30']),
    ('client.batch_size', 0, ['config.client.batch_size', 'positive']),
    ('client.batch_size', -3, ['config.client.batch_size', 'positive']),
    ('rounds', 0, ['config.rounds', 'positive']),
])
def test_bad_config_fails_before_training(field, value, expected, tmp_path):
  config = fedavg_synthetic.get_config()
  parent, _, name = field.rpartition('.')
  (config[parent] if parent else config)[name] = value
  with pytest.raises(ConfigError) as error:
    train.run(config, str(tmp_path))
  for text in expected:
    assert text in str(error.value)
  assert not os.path.exists(tmp_path / 'metrics.jsonl')


def test_config_typo_in_code_is_caught(tmp_path):
  config = fedavg_synthetic.get_config()
  config.rouns = 5
  with pytest.raises(ConfigError, match="did you mean 'rounds'"):
    train.build(config)
  config = fedavg_synthetic.get_config()
  config.data.alfa = 1.0
  with pytest.raises(ConfigError, match='alfa.*alpha'):
    train.build(config)
