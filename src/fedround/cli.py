"""Command-line helpers shared by the scripts."""
from __future__ import annotations

import os
import sys

from absl import flags


def _config_path(argv) -> str | None:
  """The file named by ``--config path[:variant]``, if any."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      value = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    return value.split(':', 1)[0]
  return None


def parse_flags(argv):
  """absl's parser, with a missing config file and config override typos
  reported in one line."""
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path):
    sys.exit(f'config error: --config {path}: no such file')
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    reason = e
    while isinstance(reason, BaseException) and reason.args:
      reason = reason.args[0]
    sys.exit(f'config error: no such config field {reason}'.replace('\n', '; '))
