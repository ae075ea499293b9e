"""Multi-controller runs: one experiment over the devices of many processes.

Every process runs the same program on the same config (the same keys draw
the same cohorts everywhere) over one global mesh of all processes'
devices; XLA's collectives join them. ``initialize`` starts
``jax.distributed``: from JAX's own cluster detection on TPU pods and under
SLURM (``auto``), or from an explicit coordinator address, process count and
process id (any machine, e.g. two processes on a laptop). On CPU the
processes talk through gloo.

Only the primary process (0) writes metrics, summaries and the progress
bar; checkpoints are written by every process (each its own shards, Orbax
coordinating), and the workdir's lock and its moves are the primary's.
"""
from __future__ import annotations

import os
import socket
import sys
import time

import jax
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               timeout_s: int = 60) -> None:
  """Joins this process to a multi-controller run before JAX starts its
  backend. ``auto``: JAX's cluster detection (TPU pods, SLURM, ...);
  otherwise all three of ``coordinator_address``, ``num_processes`` and
  ``process_id``. Waits at most ``timeout_s`` for every process, and
  stops the run when a process has been silent that long; RunError (one
  line) when the run cannot form."""
  from fedround.workdir import RunError  # pylint: disable=import-outside-toplevel
  explicit = (coordinator_address, num_processes, process_id)
  given = [v is not None for v in explicit]
  if auto and any(given):
    raise RunError('--distributed detects the cluster itself; do not also '
                   'pass --coordinator_address, --num_processes or '
                   '--process_id')
  if not auto and not all(given):
    raise RunError('a multi-process run needs all of --coordinator_address '
                   '(host:port of process 0), --num_processes and '
                   f'--process_id; got coordinator_address='
                   f'{coordinator_address}, num_processes={num_processes}, '
                   f'process_id={process_id}')
  if not auto:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise RunError(f'--process_id must be in [0, --num_processes='
                     f'{num_processes}), got {process_id}')
    host, _, port = coordinator_address.rpartition(':')
    if not host or not port.isdigit():
      raise RunError(f'--coordinator_address must be host:port, got '
                     f'{coordinator_address!r}')
  begin = time.monotonic()
  if not auto and process_id:
    # JAX aborts the process (a C++ fatal error) when the coordinator does
    # not answer; look for it first, to fail with a sentence instead.
    reason = _wait_for(host, int(port), timeout_s)
    if reason:
      raise RunError(
          f'coordinator {coordinator_address} could not be reached within '
          f'{timeout_s} s ({reason}) from process {process_id} of '
          f'{num_processes}; start process 0 first, and give every process '
          'the address process 0 listens on (--distributed_timeout waits '
          'longer)')
  # CPU devices join the run's collectives through gloo (no effect on
  # accelerators).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=max(1, int(timeout_s - (time.monotonic()
                                                       - begin))),
        heartbeat_timeout_seconds=timeout_s)
    # The backend now, while every process is here to exchange topologies
    # (lazily, a process failing before its first array would leave the
    # others waiting for it).
    jax.devices()
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    where = ('the cluster JAX detected' if auto else
             f'coordinator {coordinator_address} (process {process_id} of '
             f'{num_processes})')
    raise RunError(f'the multi-process run could not form within '
                   f'{timeout_s} s at {where}: {first}; start every process, '
                   'process 0 first, with the same --coordinator_address')


def _wait_for(host: str, port: int, timeout_s: float) -> str | None:
  """None once ``host:port`` accepts a connection, else why not after
  ``timeout_s``."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return None
    except OSError as e:
      if time.monotonic() >= deadline:
        return e.strerror or type(e).__name__
      time.sleep(0.2)


def stop(message: str) -> None:
  """Prints ``message`` and exits with status 1; in a multi-process run at
  once, without the shutdown barrier the other processes would never
  reach: they stop when this one's heartbeats do (``timeout_s``)."""
  if not jax.distributed.is_initialized():
    sys.exit(message)
  print(message, file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def is_primary() -> bool:
  """This process writes the run's metrics, summaries and progress."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op in a
  single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
