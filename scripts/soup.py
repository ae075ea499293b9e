"""Model soups of the clients' fine-tuned models during a federated run
(Wortsman et al., ICML 2022): greedy soup vs uniform soup vs the best single
client model vs the global model vs the client models' majority vote and
run-off election (Rezaei et al., ICML 2023), every --every rounds, for each
seed.

  python scripts/soup.py --config experiments/soups.py --workdir runs/soups \
      [--every 10] [--seeds 0,1,2] [--config.rounds=50]

Writes WORKDIR/seed_<s>/ (the run), WORKDIR/soups.jsonl (one row per round
and seed), soups.png and soups.md. Rerunning resumes: stages already in
soups.jsonl are skipped.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fedround.analysis import client_soups
from fedround.cli import parse_flags
from fedround.registry import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file[:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the runs, '
                               'soups.jsonl, soups.png and soups.md.')
_EVERY = flags.DEFINE_integer('every', 10, 'Rounds between soups.')
_SEEDS = flags.DEFINE_list('seeds', None, "Comma-separated seeds, e.g. "
                           "0,1,2 (default: the config's seed).")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    seeds = [int(s) for s in _SEEDS.value or [_CONFIG.value.seed]]
  except ValueError:
    sys.exit(f'config error: --seeds {",".join(_SEEDS.value)}: expected '
             'comma-separated integers, e.g. 0,1,2')
  try:
    client_soups.run_soups(_CONFIG.value, _WORKDIR.value, _EVERY.value, seeds)
  except ConfigError as e:
    sys.exit(f'config error: {e}')
  with open(f'{_WORKDIR.value}/soups.md') as f:
    print(f.read(), end='')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
