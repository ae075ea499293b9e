"""Sweep reports on a hand-written sweep: table values against hand-computed
means and sample stds, the CSV, Borda ranks with ties, plots, failed runs,
bad input and the CLI."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from fedround.analysis import rankings, report
from fedround.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, MEDIAN = 'aggregator=mean', 'aggregator=median'
LOW, HIGH = 'data.alpha=0.1', 'data.alpha=1.0'
STD_02 = 0.1414213562373095  # sample std of two values 0.2 apart
STD_04 = 0.2828427124746190  # ... 0.4 apart
STD_06 = 0.4242640687119285  # ... 0.6 apart

# Run -> (overrides, test accuracy at rounds 2 and 4, test loss at rounds 2
# and 4, train loss at round 4). Every run logs rounds 1-4, evaluating at 2, 4.
SWEEP = {
    'mean_low_1': ('mean', 0.1, 1, (0.7, 0.6), (1.0, 1.2), 0.5),
    'mean_low_2': ('mean', 0.1, 2, (0.5, 0.8), (1.4, 0.6), 0.3),
    'median_low_1': ('median', 0.1, 1, (0.4, 0.5), (1.5, 1.3), 0.6),
    'median_low_2': ('median', 0.1, 2, (0.6, 0.7), (1.1, 0.9), 0.4),
    'mean_high_1': ('mean', 1.0, 1, (0.8, 0.9), (0.5, 0.3), 0.2),
    'mean_high_2': ('mean', 1.0, 2, (0.9, 0.7), (0.4, 0.7), 0.4),
    'median_high_1': ('median', 1.0, 1, (0.7, 0.8), (0.6, 0.5), 0.3),
    'median_high_2': ('median', 1.0, 2, (0.8, 0.8), (0.5, 0.5), 0.3),
}
# (task, method) -> seeds, then (mean, std) of final test accuracy, best test
# accuracy, final test loss, final train loss, computed by hand from SWEEP.
EXPECTED = {
    (LOW, MEAN): (2, (0.7, STD_02), (0.75, STD_02 / 2), (0.9, STD_06),
                  (0.4, STD_02)),
    (LOW, MEDIAN): (2, (0.6, STD_02), (0.6, STD_02), (1.1, STD_04),
                    (0.5, STD_02)),
    (HIGH, MEAN): (2, (0.8, STD_02), (0.9, 0.0), (0.5, STD_04),
                   (0.3, STD_02)),
    (HIGH, MEDIAN): (2, (0.8, 0.0), (0.8, 0.0), (0.5, 0.0), (0.3, 0.0)),
}


def _write_run(run_dir, overrides, rows=None, error=None):
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'overrides.json'), 'w') as f:
    json.dump(overrides, f)
  if rows is not None:
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  if error is not None:
    with open(os.path.join(run_dir, 'error.txt'), 'w') as f:
      f.write(error)


def _rows(accuracies, test_losses, final_train_loss):
  rows = [{'round': r, 'train_loss': 2.0 / r, 'participants': 10}
          for r in (1, 2, 3, 4)]
  rows[-1]['train_loss'] = final_train_loss
  for row, accuracy, loss in zip(rows[1::2], accuracies, test_losses):
    row.update(test_accuracy=accuracy, test_loss=loss)
  return rows


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
  root = tmp_path_factory.mktemp('sweep')
  for name, (aggregator, alpha, seed, accuracies, test_losses,
             train_loss) in SWEEP.items():
    _write_run(root / name,
               {'aggregator': aggregator, 'data.alpha': alpha, 'seed': seed},
               _rows(accuracies, test_losses, train_loss))
  _write_run(root / 'krum_low_1',
             {'aggregator': 'krum', 'data.alpha': 0.1, 'seed': 1},
             error='Traceback (most recent call last):\nValueError: boom\n')
  # Failed after two rounds: left out of the statistics.
  _write_run(root / 'mean_low_3',
             {'aggregator': 'mean', 'data.alpha': 0.1, 'seed': 3},
             _rows((0.0,), (9.0,), 9.0)[:2], error='FloatingPointError: nan')
  _write_run(root / '_scratch', {'aggregator': 'hidden'}, _rows((1,), (1,), 1))
  os.makedirs(root / 'not_a_run')
  return str(root)


@pytest.fixture(scope='module')
def reported(sweep, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('report'))
  return report.report(sweep, out, tasks=['data.alpha']), out


def test_table_matches_hand_computation(sweep):
  groups = report.group_runs(report.load_runs(sweep), tasks=['data.alpha'])
  assert [(g.task, g.method) for g in groups] == list(EXPECTED)
  for g in groups:
    seeds, *stats = EXPECTED[g.task, g.method]
    assert len(g.runs) == seeds
    for metric, (mean, std) in zip(report.METRICS, stats):
      assert g.mean[metric] == pytest.approx(mean), (g, metric)
      assert g.std[metric] == pytest.approx(std, abs=1e-12), (g, metric)


def test_markdown_and_csv(reported):
  text, out = reported
  assert ('| data.alpha=0.1 | aggregator=mean | 2 | 0.7000 ± 0.1414 | '
          '0.7500 ± 0.0707 | 0.9000 ± 0.4243 | 0.4000 ± 0.1414 |') in text
  with open(os.path.join(out, 'summary.md')) as f:
    assert f.read() in text
  with open(os.path.join(out, 'summary.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [(r['task'], r['method']) for r in rows] == list(EXPECTED)
  for row in rows:
    seeds, *stats = EXPECTED[row['task'], row['method']]
    assert int(row['seeds']) == seeds
    for metric, (mean, std) in zip(report.METRICS, stats):
      assert float(row[f'{metric}_mean']) == pytest.approx(mean)
      assert float(row[f'{metric}_std']) == pytest.approx(std, abs=1e-12)


def test_one_seed_has_nan_std_and_no_plus_minus(sweep):
  runs = [r for r in report.load_runs(sweep) if r.overrides['seed'] == 1]
  groups = report.group_runs(runs, tasks=['data.alpha'])
  assert all(len(g.runs) == 1 for g in groups)
  assert all(math.isnan(s) for g in groups for s in g.std.values())
  assert groups[0].mean['final_test_accuracy'] == 0.6
  assert ('| data.alpha=0.1 | aggregator=mean | 1 | 0.6000 | 0.7000 | '
          '1.2000 | 0.5000 |') in report.markdown_table(groups)


def test_without_task_fields_every_method_is_one_group(sweep):
  groups = report.group_runs(report.load_runs(sweep))
  assert [(g.task, g.method, len(g.runs)) for g in groups] == [
      ('(all)', f'{m}, data.alpha={a}', 2)
      for m in (MEAN, MEDIAN) for a in (0.1, 1.0)]


def test_fields_swept_with_the_task_join_it(tmp_path):
  """data.beta moves with data.alpha: it names the task, not the method."""
  for aggregator in ('mean', 'median'):
    for alpha in (0.0, 1.0):
      for seed in (0, 1):
        _write_run(tmp_path / f'{aggregator}_{alpha}_{seed}',
                   {'aggregator': aggregator, 'data.alpha': alpha,
                    'data.beta': alpha, 'seed': seed},
                   _rows((0.5, 0.6), (1.0, 0.9), 0.4))
  groups = report.group_runs(report.load_runs(tmp_path),
                             tasks=['data.alpha'])
  assert sorted({g.method for g in groups}) == [MEAN, MEDIAN]
  assert sorted({g.task for g in groups}) == [
      'data.alpha=0.0, data.beta=0.0', 'data.alpha=1.0, data.beta=1.0']
  assert all(len(g.runs) == 2 for g in groups)


def test_borda_unit():
  scores = {'t1': {'a': 0.9, 'b': 0.8, 'c': 0.8},
            't2': {'a': 0.1, 'b': 0.3},  # c missing: 0 points
            't3': {'a': math.nan, 'b': 0.5, 'c': 0.7}}  # NaN: as missing
  # t1: a 2, b and c share (1 + 0) / 2; t2: b 1, a 0; t3: c 1, b 0.
  assert rankings.borda(scores) == [('a', 2.0), ('b', 1.5), ('c', 1.5)]
  # t1: b and c share (2 + 1) / 2, a 0; t2: a 1, b 0; t3: b 1, c 0.
  assert rankings.borda(scores, higher_is_better=False) == [
      ('b', 2.5), ('c', 1.5), ('a', 1.0)]
  assert rankings.borda({'t': {'z': 1.0, 'y': 1.0, 'x': 1.0}}) == [
      ('x', 1.0), ('y', 1.0), ('z', 1.0)]
  assert rankings.task_ranks(scores)['t1'] == {'a': 1, 'b': 2.5, 'c': 2.5}
  assert report.RANKINGS['borda'].rank is rankings.borda


@pytest.mark.parametrize('metric, expected', [
    # Low alpha: mean wins; high alpha: a tie, 0.5 points each.
    ('final_test_accuracy', [(MEAN, 1.5), (MEDIAN, 0.5)]),
    ('final_test_loss', [(MEAN, 1.5), (MEDIAN, 0.5)]),
    # 0.3 vs (0.2 + 0.4) / 2 = 0.30000000000000004: still a tie.
    ('final_train_loss', [(MEAN, 1.5), (MEDIAN, 0.5)]),
    ('best_test_accuracy', [(MEAN, 2.0), (MEDIAN, 0.0)]),
])
def test_borda_on_sweep(sweep, metric, expected):
  groups = report.group_runs(report.load_runs(sweep), tasks=['data.alpha'])
  scores = report.ranking_scores(groups, metric)
  assert rankings.borda(scores, report.METRICS[metric]) == expected


def test_ranking_md(reported):
  text, out = reported
  with open(os.path.join(out, 'ranking.md')) as f:
    ranking = f.read()
  assert ranking in text
  assert f'| rank | method | points | {LOW} | {HIGH} |' in ranking
  assert f'| 1 | {MEAN} | 1.5 | 1 | 1.5 |' in ranking
  assert f'| 2 | {MEDIAN} | 0.5 | 2 | 1.5 |' in ranking


def test_plots_are_pngs(reported):
  _, out = reported
  for name in ('test_accuracy.png', 'train_loss.png'):
    path = os.path.join(out, name)
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 200 and width > 200


def test_curve_uses_rounds_every_seed_has():
  short = report.Run('a', {}, [{'round': r, 'train_loss': float(r)}
                                for r in (1, 2, 3)])
  long = report.Run('b', {}, [{'round': r, 'train_loss': float(r) + 2}
                               for r in (1, 2, 3, 4)])
  rounds, mean, std = report.curve([short, long], 'train_loss')
  assert rounds.tolist() == [1, 2, 3]
  assert mean.tolist() == [2.0, 3.0, 4.0]
  assert std == pytest.approx([2 ** 0.5] * 3)


def test_failed_runs_are_listed_and_left_out(reported):
  text, out = reported
  assert '## Failed runs' in text
  assert '- krum_low_1: ValueError: boom' in text
  assert '- mean_low_3: FloatingPointError: nan' in text
  assert 'krum' not in text.split('## Failed runs')[0]
  assert 'hidden' not in text
  with open(os.path.join(out, 'report.md')) as f:
    assert f.read() == text


@pytest.mark.parametrize('kwargs, expected', [
    ({'tasks': ['data.alfa']},
     ["task field 'data.alfa'", 'aggregator, data.alpha, seed']),
    ({'seed_field': 'sed'}, ["seed field 'sed'", 'aggregator, data.alpha']),
    ({'tasks': ['seed']}, ["'seed' cannot be both"]),
    ({'metric': 'accuracy'},
     ["metric 'accuracy'", 'final_test_accuracy, best_test_accuracy, '
      'final_test_loss, final_train_loss']),
    ({'ranking': 'kemeni'}, ["ranking 'kemeni'", 'borda, kemeny']),
    ({'metric': 'rounds_to_target'}, ['needs a target test accuracy']),
    ({'target': 1.5}, ['target must be a test accuracy in (0, 1], got 1.5']),
])
def test_bad_input(sweep, tmp_path, kwargs, expected):
  with pytest.raises(ConfigError) as error:
    report.report(sweep, str(tmp_path), **kwargs)
  for text in expected:
    assert text in str(error.value)


def test_rounds_to_target(sweep, tmp_path):
  """Target 0.7 (accuracy at rounds 2 and 4): mean/low reaches it at
  rounds 2 and 4; median/low's seed 1 never does, so the group has not
  reached it; on high both rules reach it at round 2. Ranked on it (lower
  is better), mean beats median on low and ties on high."""
  runs = report.load_runs(sweep)
  by_name = {r.name: report.run_metrics(r, 0.7)['rounds_to_target']
             for r in runs}
  assert by_name['mean_low_1'] == 2 and by_name['mean_low_2'] == 4
  assert by_name['median_low_1'] == math.inf
  assert math.isnan(report.run_metrics(runs[0])['rounds_to_target'])
  out = _cli(sweep, '--task', 'data.alpha', '--target', '0.7', '--metric',
             'rounds_to_target', '--out', str(tmp_path))
  assert out.returncode == 0, out.stderr
  assert '| data.alpha=0.1 | aggregator=mean | 2 |' in out.stdout
  rows = {line.split(' | ')[1] + line.split(' | ')[0]: line.split(' | ')[-1]
          for line in out.stdout.splitlines() if 'aggregator=' in line
          and line.startswith('| data.alpha')}
  assert rows['aggregator=mean| data.alpha=0.1'] == '3.0 ± 1.4 |'
  assert rows['aggregator=median| data.alpha=0.1'] == 'not reached |'
  assert rows['aggregator=median| data.alpha=1.0'] == '2.0 ± 0.0 |'
  assert report._mean_pm_std(math.inf, math.nan) == 'inf'  # a loss
  ranking = (tmp_path / 'ranking.md').read_text()
  assert 'rounds_to_target (lower is better)' in ranking
  assert '| 1 | aggregator=mean | 1.5 | 1 | 1.5 |' in ranking


def test_missing_or_empty_directory(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    report.report(str(tmp_path / 'nowhere'))
  with pytest.raises(ConfigError, match='no runs in .*overrides.json'):
    report.report(str(tmp_path))


def _cli(*args):
  return subprocess.run([sys.executable, 'scripts/report.py', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli(sweep, tmp_path):
  out = _cli(sweep, '--task', 'data.alpha', '--out', str(tmp_path))
  assert out.returncode == 0, out.stderr
  assert '| data.alpha=1.0 | aggregator=median | 2 | 0.8000 ± 0.0000' in (
      out.stdout)
  assert os.path.exists(tmp_path / 'ranking.md')
  out = _cli(sweep, '--task', 'data.alfa', '--out', str(tmp_path))
  assert out.returncode != 0
  assert out.stderr.startswith('config error: ')
  assert 'data.alfa' in out.stderr and 'data.alpha' in out.stderr


def test_heatmap_pivots_rules_against_attack_scenarios(tmp_path):
  """Rows are rules, columns (fraction, attack); seeds are averaged and a
  scenario not run shows as '-'."""
  accuracy = {('mean', 0.0, 'none'): [0.9, 0.8], ('mean', 0.2, 'alie'): [0.1],
              ('krum', 0.0, 'none'): [0.85], ('krum', 0.2, 'alie'): [0.7]}
  for (rule, fraction, attack), values in accuracy.items():
    for seed, value in enumerate(values):
      _write_run(tmp_path / f'{rule}_{fraction}_{attack}_{seed}', {'aggregator': rule, 'attack.fraction': fraction,
                            'attack.name': attack, 'seed': seed},
                 [{'round': 1, 'test_accuracy': value, 'test_loss': 1.0,
                   'train_loss': 1.0}])
  _write_run(tmp_path / 'krum_ipm', {'aggregator': 'krum',
                                     'attack.fraction': 0.1,
                        'attack.name': 'ipm', 'seed': 0},
             [{'round': 1, 'test_accuracy': 0.5, 'test_loss': 1.0,
               'train_loss': 1.0}])
  grid = report.pivot(report.load_runs(str(tmp_path)), 'aggregator',
                      ['attack.fraction', 'attack.name'])
  assert grid.columns == ['0.0, none', '0.1, ipm', '0.2, alie']
  mean = dict(zip(grid.rows, grid.mean.tolist()))
  np.testing.assert_allclose(mean['mean'], [0.85, np.nan, 0.1])
  np.testing.assert_allclose(mean['krum'], [0.85, 0.5, 0.7])
  out = tmp_path / 'out'
  text = report.report(str(tmp_path), str(out), tasks=['attack.name'],
                       heatmap=['aggregator', 'attack.fraction',
                                'attack.name'])
  assert '| mean | 0.850 | - | 0.100 |' in text
  assert (out / 'heatmap.png').stat().st_size > 1000
  assert (out / 'heatmap.md').read_text().startswith('final_test_accuracy')
  with pytest.raises(ConfigError, match="heatmap field 'attack.nam'"):
    report.pivot(report.load_runs(str(tmp_path)), 'aggregator',
                 ['attack.nam'])


def test_extra_curves_plot_the_runs_that_log_them(tmp_path):
  """--curve aggregator.gamma plots FedLAW's gamma for the runs that log it
  (FedAvg does not); a key nobody logged is an error naming the keys; the
  final train loss skips rounds where nobody trained (NaN)."""
  for rule, seed in (('fedlaw', 0), ('fedlaw', 1), ('weighted_mean', 0)):
    rows = [{'round': r, 'train_loss': 1.0 / r, 'test_accuracy': 0.5,
             'test_loss': 1.0} for r in (1, 2, 3)]
    rows[-1]['train_loss'] = float('nan')
    if rule == 'fedlaw':
      for r in rows:
        r['aggregator.gamma'] = 0.9 + 0.01 * seed
    _write_run(tmp_path / f'{rule}_{seed}',
               {'aggregator': rule, 'seed': seed}, rows)
  out = tmp_path / 'out'
  report.report(str(tmp_path), str(out), curves=['aggregator.gamma'])
  assert (out / 'aggregator.gamma.png').stat().st_size > 1000
  runs = report.load_runs(str(tmp_path))
  assert report.run_metrics(runs[0])['final_train_loss'] == 0.5
  with pytest.raises(ConfigError, match="curve 'aggregator.gama': no run "
                     'logged it; keys in metrics.jsonl: aggregator.gamma'):
    report.report(str(tmp_path), str(out), curves=['aggregator.gama'])


def _summary(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['task', 'method', 'seeds', 'final_test_accuracy_mean'])
    writer.writerows([[task, method, 1, value] for task, method, value in rows])
  return str(path)


def test_rank_joins_summaries_of_a_grid_and_a_rule_run_later(tmp_path):
  """scripts/rank.py: Borda over the union of two summary.csv files, by
  hand: on 'a=1, b=x' C > A > B (2, 1, 0 points), on 'a=1, b=y' A > C > B,
  on 'a=0, b=none' B > A = C (2, then 0.5 each): A 3.5, C 3.5, B 2; the
  a=1 group's mean and worst task per method."""
  grid = _summary(tmp_path / 'grid.csv', [
      ('a=0, b=none', 'rule=A', 0.8), ('a=0, b=none', 'rule=B | x', 0.9),
      ('a=1, b=x', 'rule=A', 0.6), ('a=1, b=x', 'rule=B | x', 0.1),
      ('a=1, b=y', 'rule=A', 0.7), ('a=1, b=y', 'rule=B | x', 0.2)])
  later = _summary(tmp_path / 'later.csv', [
      ('a=0, b=none', 'rule=C', 0.8), ('a=1, b=x', 'rule=C', 0.65),
      ('a=1, b=y', 'rule=C', 0.3)])
  out = subprocess.run(
      [sys.executable, 'scripts/rank.py', grid, later, '--baseline',
       'a=0, b=none', '--group', 'a'], cwd=ROOT, capture_output=True,
      text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[2:] == [
      '| 1 | `rule=A` | 3.5 | 0.800 | 0.650 / 0.600 (x) |',
      '| 2 | `rule=C` | 3.5 | 0.800 | 0.475 / 0.300 (y) |',
      r'| 3 | `rule=B \| x` | 2 | 0.900 | 0.150 / 0.100 (x) |']
  twice = subprocess.run([sys.executable, 'scripts/rank.py', grid, grid],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
  assert twice.returncode != 0
  assert twice.stderr.strip().endswith(
      'rule=A on a=0, b=none is also in an earlier file')
