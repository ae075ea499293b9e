"""Ranks the methods of one or more reports' summary.csv files together, e.g.
a rule run later into a finished grid, without the first grid's run folders.

  .venv/bin/python scripts/rank.py docs/byzantine/summary.csv \
      docs/byzantine_flag_rescaled/summary.csv [--metric final_test_accuracy] \
      [--ranking borda] [--baseline 'attack.fraction=0.0, attack.name=none'] \
      [--group attack.fraction]

Prints a Markdown table: rank, method, points (Borda) or disagreements
(Kemeny), the metric on the --baseline task, and per --group value the mean
and the worst task (with its last field's value) over the tasks that share it
('-' where a method has none).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys

from fedround.analysis import report
from fedround.registry import ConfigError


def load_scores(paths, metric: str) -> dict[str, dict[str, float]]:
  """Task -> method -> the metric's mean, over every file; a (task, method)
  given twice is an error."""
  scores: dict[str, dict[str, float]] = {}
  for path in paths:
    try:
      with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    except OSError as e:
      raise ConfigError(f'{path}: {e.strerror}') from None
    column = f'{metric}_mean'
    if rows and column not in rows[0]:
      raise ConfigError(f'{path}: no column {column!r}; columns: '
                        f'{", ".join(rows[0])}')
    for row in rows:
      by_method = scores.setdefault(row['task'], {})
      if row['method'] in by_method:
        raise ConfigError(f'{path}: {row["method"]} on {row["task"]} is '
                          'also in an earlier file')
      by_method[row['method']] = float(row[column])
  return scores


def _groups(scores, field: str) -> dict[str, list[str]]:
  """Value of ``field`` -> the tasks that have it (tasks read
  'field=value, field=value', as report labels them)."""
  groups: dict[str, list[str]] = {}
  for task in scores:
    parts = dict(p.strip().split('=', 1) for p in task.split(', ') if '=' in p)
    if field in parts:
      groups.setdefault(parts[field], []).append(task)
  return groups


def _mean_and_worst(values: dict[str, float], higher_is_better: bool) -> str:
  """'mean / worst (its task's last value)' over the non-NaN values."""
  values = {t: v for t, v in values.items() if not math.isnan(v)}
  if not values:
    return '-'
  worst = (min if higher_is_better else max)(values, key=values.get)
  return (f'{sum(values.values()) / len(values):.3f} / {values[worst]:.3f} '
          f'({worst.rsplit("=", 1)[-1]})')


def table(scores, ranking: str, higher_is_better: bool, baseline: str | None,
          group: str | None) -> str:
  rule = report.RANKINGS[ranking]
  ranked = rule.rank(scores, higher_is_better)
  groups = {k: v for k, v in _groups(scores, group).items()
            if v != [baseline]} if group else {}
  head = ['rank', 'method', rule.column] + (
      ['baseline'] if baseline else []) + [
              f'{group}={value}: mean / worst' for value in groups]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for rank, (method, points) in enumerate(ranked, 1):
    cells = [str(rank), report._cell(f'`{method}`'), f'{points:g}']
    if baseline:
      value = scores[baseline].get(method, math.nan)
      cells.append('-' if math.isnan(value) else f'{value:.3f}')
    for tasks in groups.values():
      cells.append(_mean_and_worst(
          {t: scores[t][method] for t in tasks if method in scores[t]},
          higher_is_better))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n', 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('paths', nargs='+', metavar='SUMMARY_CSV')
  parser.add_argument('--metric', default='final_test_accuracy')
  parser.add_argument('--ranking', default='borda',
                      help=f'ranking rule: {", ".join(report.RANKINGS)}')
  parser.add_argument('--baseline', default=None,
                      help='a task whose metric gets its own column')
  parser.add_argument('--group', default=None,
                      help='a task field: mean and worst per value')
  args = parser.parse_args()
  try:
    if args.metric not in report.METRICS:
      raise ConfigError(f'--metric {args.metric!r}: valid metrics: '
                        f'{", ".join(report.METRICS)}')
    if args.ranking not in report.RANKINGS:
      raise ConfigError(f'--ranking {args.ranking!r}: valid rankings: '
                        f'{", ".join(report.RANKINGS)}')
    scores = load_scores(args.paths, args.metric)
    if args.baseline and args.baseline not in scores:
      raise ConfigError(f'--baseline {args.baseline!r}: not a task; tasks: '
                        f'{", ".join(scores)}')
    print(table(scores, args.ranking, report.METRICS[args.metric],
                args.baseline, args.group))
  except ConfigError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
