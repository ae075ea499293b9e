"""Runs an experiment's sweep: one sub-directory per run, named by its overrides.

  python scripts/sweep.py --config experiments/fedavg_synthetic.py \
      --workdir runs/sweep [--jobs 2] [--replicas seeds] \
      [--sweep 'seed=[0, 1, 2]'] [--config.rounds=50]

The grid is the experiment file's ``get_sweep()`` (if any) times every
``--sweep field=[values]``; ``--config.*`` overrides apply to every run.
Rerunning resumes: finished runs are skipped, interrupted ones continue from
their checkpoints. A failing run does not stop the others; the summary lists
it and the exit status is 1. Then: ``python scripts/report.py DIR``.
Over many processes (the flags of scripts/train.py's multi-process run)
every process trains every run in turn, with --jobs 1.
"""
import ast
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from fedround import sweep
from fedround.cli import parse_flags, start_distributed
from fedround.distributed import is_primary, stop
from fedround.registry import ConfigError
from fedround.workdir import RunError, prepare

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file[:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory: one '
                               'sub-directory per run.')
_SWEEP = flags.DEFINE_multi_string(
    'sweep', [], "An extra axis, field=[values], e.g. 'seed=[0, 1, 2]'; "
    'crossed with get_sweep() and the other --sweep axes.')
_JOBS = flags.DEFINE_integer('jobs', 1, 'Runs at a time, each in its own '
                             'process; 1 runs them in this process.')
_REPLICAS = flags.DEFINE_string(
    'replicas', '', 'Fields whose runs execute as one vmapped computation: '
    'seeds, client.learning_rate, server.learning_rate (comma-separated).')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_axis(text: str) -> list[dict]:
  field, sep, values = text.partition('=')
  try:
    values = ast.literal_eval(values.strip()) if sep else None
  except (ValueError, SyntaxError):
    values = None
  if not isinstance(values, (list, tuple)) or not field.strip():
    raise ConfigError(
        f'--sweep {text!r}: expected field=[value, ...] with Python literal '
        "values (quote strings), e.g. 'seed=[0, 1, 2]' or "
        '"aggregator=[\'mean\', \'weighted_mean\']"')
  return sweep.sweep(field.strip(), values)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    start_distributed()
    if jax.process_count() > 1 and _JOBS.value > 1:
      raise ConfigError('--jobs must be 1 in a multi-process sweep: every '
                        'process trains each run over all their devices')
    replicas = sweep.parse_replica_fields(_REPLICAS.value)
    grid = sweep.product(sweep.declared_grid(flags.FLAGS['config'].config_filename),
                         *map(parse_axis, _SWEEP.value))
    prepare(_WORKDIR.value)
    runs = sweep.plan(_CONFIG.value, grid, _WORKDIR.value)
  except ConfigError as e:
    stop(f'config error: {e}')
  except RunError as e:
    stop(f'error: {e}')
  result = sweep.execute(runs, jobs=_JOBS.value, replicas=replicas,
                         progress=_CONFIG.value.progress and is_primary())
  if is_primary():
    print(sweep.format_result(result))
  sys.exit(1 if result.failed else 0)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
