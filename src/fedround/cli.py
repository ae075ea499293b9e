"""Command-line helpers shared by the scripts."""
from __future__ import annotations

import os
import sys

from absl import flags

from fedround import distributed

# Multi-controller runs (fedround.distributed), for train.py and sweep.py.
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process run found by JAX\'s cluster '
    'detection (TPU pod slices, SLURM).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process '
    'run; with --num_processes and --process_id.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Processes in the multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   "This process's index, 0 to "
                                   '--num_processes - 1.')
_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout', 60, 'Seconds to wait for every process of a '
    'multi-process run to join, and for a silent one before all stop.')


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


def start_distributed() -> None:
  """``distributed.initialize`` from the flags, when any asks for a
  multi-process run."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _DISTRIBUTED.value or any(v is not None for v in explicit):
    distributed.initialize(*explicit, auto=_DISTRIBUTED.value,
                           timeout_s=_TIMEOUT.value)
