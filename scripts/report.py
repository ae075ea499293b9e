"""Summarises a sweep directory (one sub-directory per run) and ranks methods.

  .venv/bin/python scripts/report.py DIR [--task data.alpha --task data.beta] \
      [--seed_field seed] [--metric final_test_accuracy] [--target 0.8] \
      [--out OUT] [--heatmap ROW_FIELD COLUMN_FIELD ...] [--curve METRICS_KEY ...]

Writes summary.md, summary.csv, ranking.md, report.md, test_accuracy.png and
train_loss.png (and with --heatmap, heatmap.md and heatmap.png) to OUT
(default DIR/report) and prints report.md.
"""
from __future__ import annotations

import argparse
import sys

from fedround.analysis import report
from fedround.registry import ConfigError


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n', 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sweep_dir', metavar='DIR')
  parser.add_argument('--task', action='append', default=[],
                      help='an override field that names the task, e.g. '
                      'data.alpha; repeat for several')
  parser.add_argument('--seed_field', default=None,
                      help='the override field averaged over (default: '
                      f'{report.DEFAULT_SEED_FIELD!r} when runs override it)')
  parser.add_argument('--metric', default='final_test_accuracy',
                      help=f'ranking metric: {", ".join(report.METRICS)}')
  parser.add_argument('--target', type=float, default=None,
                      help='a test accuracy: adds rounds_to_target (the '
                      'first evaluated round at or above it) to the table')
  parser.add_argument('--ranking', default='borda',
                      help=f'ranking rule: {", ".join(report.RANKINGS)}')
  parser.add_argument('--heatmap', nargs='+', default=(),
                      metavar='FIELD',
                      help='ROW COLUMN [COLUMN ...]: also write heatmap.md '
                      'and heatmap.png of --metric, e.g. --heatmap '
                      'aggregator attack.fraction attack.name')
  parser.add_argument('--curve', action='append', default=[],
                      metavar='KEY',
                      help='also plot this metrics.jsonl key against round '
                      '(KEY.png), e.g. aggregator.gamma; repeat for several')
  parser.add_argument('--out', default=None,
                      help='output directory (default: DIR/report)')
  args = parser.parse_args()
  try:
    text = report.report(args.sweep_dir, args.out, tasks=args.task,
                         seed_field=args.seed_field, metric=args.metric,
                         ranking=args.ranking, target=args.target,
                         heatmap=args.heatmap,
                         curves=args.curve)
  except ConfigError as e:
    sys.exit(f'config error: {e}')
  print(text, end='')


if __name__ == '__main__':
  main()
