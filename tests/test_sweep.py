"""Sweeps: a grid in one command, resumable, failure-tolerant, and vmapped
seed / learning-rate replicas that equal separate runs."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import fedavg_digits
import fedavg_synthetic
from conftest import assert_trees_close, tiny_digits
from fedround import sweep, train
from fedround.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep_cli(*args):
  return subprocess.run(
      [sys.executable, 'scripts/sweep.py', '--config',
       'experiments/fedavg_digits.py', '--config.data.num_clients=8',
       "--config.model=logistic", '--config.clients_per_round=4',
       '--config.client.local_steps=2', '--config.rounds=2',
       '--config.eval_every=2', '--config.checkpoint_every=2',
       '--config.progress=False', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_two_by_two_sweep_runs_then_skips(tmp_path):
  grid = sweep.product(sweep.sweep('aggregator', ['mean', 'weighted_mean']),
                       sweep.sweep('seed', [0, 1]))
  runs = sweep.plan(tiny_digits(), grid, str(tmp_path))
  result = sweep.execute(runs, progress=False)
  assert sorted(result.finished) == sorted(os.listdir(tmp_path)) == [
      'aggregator=mean,seed=0', 'aggregator=mean,seed=1',
      'aggregator=weighted_mean,seed=0', 'aggregator=weighted_mean,seed=1']
  assert not result.failed and not result.skipped
  for run in runs:
    with open(os.path.join(run.workdir, 'overrides.json')) as f:
      assert json.load(f) == run.overrides
    saved = json.loads(open(os.path.join(run.workdir, 'config.json')).read())
    assert saved['aggregator'] == run.overrides['aggregator']
    assert saved['seed'] == run.overrides['seed']
  # The same sweep from the command line finds all four done.
  out = _sweep_cli('--workdir', str(tmp_path),
                   '--sweep', "aggregator=['mean', 'weighted_mean']",
                   '--sweep', 'seed=[0, 1]')
  assert out.returncode == 0, out.stderr
  assert '4 runs: 0 finished, 4 already done, 0 failed' in out.stdout


def test_a_sweep_on_the_algorithms_own_rule_plans_again(tmp_path):
  """config.aggregator left empty: config.json records the resolved rule,
  and planning the sweep again compares like with like and skips it."""
  config = tiny_digits()
  config.aggregator = ''
  grid = sweep.sweep('seed', [0])
  first = sweep.execute(sweep.plan(config, grid, str(tmp_path)),
                        progress=False)
  again = sweep.execute(sweep.plan(config, grid, str(tmp_path)),
                        progress=False)
  assert first.finished == again.skipped == ['seed=0']


def test_failing_run_does_not_stop_the_others(tmp_path):
  """A run whose checkpoint is corrupt fails when it restores (every config
  error is caught by plan, before anything runs); the others, in two worker
  processes, finish."""
  grid = sweep.sweep('clients_per_round', [2, 3, 4])
  runs = sweep.plan(tiny_digits(), grid, str(tmp_path))
  corrupt = tmp_path / 'clients_per_round=3' / 'checkpoints' / '2'
  corrupt.mkdir(parents=True)
  (corrupt / 'junk').write_text('not a checkpoint')
  result = sweep.execute(runs, jobs=2, progress=False)
  assert sorted(result.finished) == ['clients_per_round=2',
                                     'clients_per_round=4']
  assert list(result.failed) == ['clients_per_round=3']
  assert 'FAILED clients_per_round=3' in sweep.format_result(result)
  assert (tmp_path / 'clients_per_round=3' / 'error.txt').read_text()
  for name in result.finished:
    summary = json.loads((tmp_path / name / 'summary.json').read_text())
    assert summary['rounds'] == 2


def test_impossible_runs_fail_before_any_starts(tmp_path):
  grid = sweep.sweep('clients_per_round', [2, 99])
  with pytest.raises(ConfigError, match=r'clients_per_round=99: .*1\.\.8'):
    sweep.plan(tiny_digits(), grid, str(tmp_path))
  assert not list(tmp_path.iterdir())


def _synthetic(rounds=4):
  config = fedavg_synthetic.get_config()
  config.rounds = rounds
  config.eval_every = 2
  config.checkpoint_every = 2
  config.client.local_epochs = 2
  config.progress = False
  return config


def test_replicas_equal_separate_runs_and_trace_once(tmp_path, traces):
  grid = sweep.product(sweep.sweep('client.learning_rate', [0.01, 0.03]),
                       sweep.sweep('seed', [0, 1, 2]))
  runs = sweep.plan(_synthetic(), grid, str(tmp_path / 'vmapped'))
  groups = sweep.group_replicas(runs, ('seed', 'client.learning_rate'))
  assert [len(g) for g in groups] == [6]
  vmapped = train.run_replicas([r.config for r in runs],
                               [r.workdir for r in runs])
  assert len(traces) == 1 and traces[0] == 1
  assert all(r.summary['replicas'] == 6 for r in vmapped)
  finals = []
  for run, together in zip(runs, vmapped):
    alone = train.run(run.config, str(tmp_path / 'alone' / run.name))
    assert_trees_close(together.state.params, alone.state.params, atol=1e-6,
                       rtol=1e-6)
    finals.append(together.summary['final_test_accuracy'])
    np.testing.assert_allclose(finals[-1],
                               alone.summary['final_test_accuracy'],
                               atol=1e-6)
  assert len(set(jax.tree.leaves([r.state.params for r in vmapped])[0]
                 .ravel().tolist())) > 1  # replicas did not collapse


def test_replica_group_resumes_bit_exactly(tmp_path):
  grid = sweep.sweep('seed', [0, 1])
  stopped = sweep.plan(_synthetic(rounds=2), grid, str(tmp_path / 'stopped'))
  train.run_replicas([r.config for r in stopped],
                     [r.workdir for r in stopped])
  resumed_runs = sweep.plan(_synthetic(rounds=4), grid,
                            str(tmp_path / 'stopped'))
  resumed = train.run_replicas([r.config for r in resumed_runs],
                               [r.workdir for r in resumed_runs])
  assert resumed[0].summary['resumed_from'] == 2
  fresh_runs = sweep.plan(_synthetic(rounds=4), grid, str(tmp_path / 'fresh'))
  fresh = train.run_replicas([r.config for r in fresh_runs],
                             [r.workdir for r in fresh_runs])
  for a, b in zip(jax.tree.leaves([r.state for r in resumed]),
                  jax.tree.leaves([r.state for r in fresh])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for run_a, run_b in zip(resumed_runs, fresh_runs):
    rows = lambda run: open(os.path.join(run.workdir, 'metrics.jsonl')).read()
    assert rows(run_a) == rows(run_b)


def test_sweep_declared_next_to_the_config_expands():
  grid = sweep.declared_grid('experiments/fedavg_synthetic.py')
  runs = sweep.plan(fedavg_synthetic.get_config(), grid, '/nonexistent')
  assert len(runs) == len({r.name for r in runs}) == len(grid) > 1
  assert {r.config.seed for r in runs} == {0, 1, 2}
  assert all(r.config.data.alpha == r.config.data.beta for r in runs)


@pytest.mark.parametrize('name', sorted(
    f[:-3] for f in os.listdir(os.path.join(ROOT, 'experiments'))
    # test_byzantine vets byzantine; test_adaptive_fedopt vets adaptive_fedopt
    # on fixture files (its own need downloads).
    if f.endswith('.py') and f not in ('byzantine.py', 'adaptive_fedopt.py')))
def test_every_experiment_and_its_sweep_configure(name, tmp_path):
  """Each experiments/*.py config, and every run its get_sweep declares,
  passes every check train.run makes before training."""
  grid = sweep.declared_grid(os.path.join(ROOT, 'experiments', f'{name}.py'))
  module = __import__(name)
  runs = sweep.plan(module.get_config(), grid, str(tmp_path))
  assert len(runs) == len(grid)


def test_run_names_are_shell_safe_and_distinct():
  assert sweep.run_name({}) == 'base'
  assert sweep.run_name({'aggregator': 'clip(max_norm=10) | krum(f=2)',
                         'seed': 1}) == (
                             'aggregator=clip_max_norm=10_+krum_f=2,seed=1')
  long = {'aggregator': 'x' * 200}
  assert len(sweep.run_name(long)) <= 120
  assert sweep.run_name(long) != sweep.run_name({'aggregator': 'x' * 201})


@pytest.mark.parametrize('grid, expected', [
    ([{'client.learnig_rate': 0.1}],
     ["'client.learnig_rate'", "did you mean 'learning_rate'", 'batch_size']),
    ([{'sed': 1}], ["'sed'", "did you mean 'seed'"]),
    ([{'seed': 'one'}], ['seed', 'expected int', "'one'"]),
    ([{'aggregator': 'mean'}, {'aggregator': 'krumm'}],
     ['aggregator=krumm', 'unknown aggregator', 'weighted_mean']),
    ([{'data.alfa': 1.0}], ['config.data', 'alfa', 'alpha']),
    ([{'aggregator': 'mean'}, {'aggregator': ' mean'}],
     ['share the directory name']),
    ([], ['empty']),
])
def test_bad_sweep_fails_before_any_run(grid, expected, tmp_path):
  with pytest.raises(ConfigError) as error:
    sweep.plan(_synthetic(), grid, str(tmp_path))
  for text in expected:
    assert text in str(error.value)
  assert os.listdir(tmp_path) == []


def test_sweep_cli_rejects_bad_replica_axis_and_axis(tmp_path):
  out = _sweep_cli('--workdir', str(tmp_path), '--replicas', 'aggregator',
                   '--sweep', "aggregator=['mean', 'weighted_mean']")
  assert out.returncode != 0
  assert 'config error' in out.stderr and "'aggregator'" in out.stderr
  assert 'client.learning_rate' in out.stderr
  out = _sweep_cli('--workdir', str(tmp_path), '--sweep', 'seed=0')
  assert out.returncode != 0 and 'field=[value, ...]' in out.stderr
  assert os.listdir(tmp_path) == []


def test_changed_config_in_an_existing_run_dir_is_refused(tmp_path):
  runs = sweep.plan(_synthetic(rounds=2), [{'seed': 0}], str(tmp_path))
  sweep.execute(runs, progress=False)
  changed = _synthetic(rounds=2)
  changed.client.learning_rate = 0.5
  with pytest.raises(ConfigError, match='client.learning_rate'):
    sweep.plan(changed, [{'seed': 0}], str(tmp_path))
