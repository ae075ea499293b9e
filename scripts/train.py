"""Trains one experiment config.

  python scripts/train.py --config experiments/fedavg_synthetic.py \
      --workdir runs/fedavg_synthetic [--config.rounds=50]

Rerunning with the same --workdir resumes from its latest checkpoint.
A multi-process run starts the same command in every process, with
--distributed (TPU pods, SLURM) or --coordinator_address=host:port
--num_processes=N --process_id=I (README: "Many hosts").
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fedround import train
from fedround.cli import parse_flags, start_distributed
from fedround.distributed import is_primary, stop
from fedround.registry import ConfigError
from fedround.workdir import RunError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file[:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics and '
                               'checkpoints.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    start_distributed()
    result = train.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    stop(f'config error: {e}')
  except RunError as e:
    stop(f'error: {e}')
  if is_primary():
    print(train.format_summary(result.summary))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
