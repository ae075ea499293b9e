"""Writes a config's federation as fedround's memory-mapped arrays.

  python scripts/convert.py --config experiments/adaptive_fedopt.py:stackoverflow \
      --out data/stackoverflow_npy

Any source (a FedJAX or TFF SQLite file, LEAF JSON, TFDS) is read once and
saved as one .npy file per array (fedround.data.arrays). Train on it with
--config.data="{'name': 'npy', 'path': 'data/stackoverflow_npy',
'placement': 'host'}": the examples stay on disk and each chunk of rounds
reads only its cohorts' rows.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from fedround import train
from fedround.cli import parse_flags
from fedround.data import arrays
from fedround.registry import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file[:variant].', lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Directory to write.')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  try:
    data = train.load_federation(_CONFIG.value)
  except ConfigError as e:
    sys.exit(f'config error: {e}')
  arrays.save(data, _OUT.value)
  print(data.describe())
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
