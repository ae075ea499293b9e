"""Command-line helpers shared by the scripts."""
from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv):
  """absl's parser, with config override typos reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    reason = e
    while isinstance(reason, BaseException) and reason.args:
      reason = reason.args[0]
    sys.exit(f'config error: no such config field {reason}'.replace('\n', '; '))
