"""Times one fedround round against its two bounds, side by side.

  .venv/bin/python scripts/bench.py [--quick] [--workload NAME] [--out PATH]

Per workload, the median milliseconds per round of
  (a) fedround: ``make_rounds`` (jit of a scan over R rounds), call time / R;
  (b) the FedJAX-style per-client Python loop (``baselines.python_loop_round``)
      with the client's step and batches jitted once;
  (c) the centralised floor (``baselines.make_centralised``): the cohort's
      examples and steps as one model with batch C * B;
plus the compile time and memory of (a), the bytes the flat federation
stores against the padded layout, and the targets:
(a) >= 10x faster than (b) when dispatch-bound, never slower than (b) when
compute-bound, and (a) / (c) <= 1.5 on both.

The ``replicas`` workload times S seeds of ``make run``'s job one by one
against one vmapped computation (``--replicas seeds`` in sweeps).
"""
from __future__ import annotations

import argparse
import os
import runpy
import shlex
import statistics
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedround import baselines, train
from fedround.rounds import make_rounds
from fedround.sweep import set_field

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           os.pardir, 'experiments')
MAX_FLOOR_RATIO = 1.5
MIB = 2 ** 20


class Workload(NamedTuple):
  """An experiment config with overrides, and how often to time each path."""
  experiment: str       # file under experiments/
  overrides: dict       # dotted config field -> value
  min_speedup: float    # target for (b) / (a)
  rounds_per_call: int  # R of the scanned fedround call
  calls: int            # timed fedround calls
  loop_rounds: int      # timed Python-loop rounds
  floor_calls: int      # timed centralised calls


WORKLOADS = {
    'dispatch': Workload(
        'fedavg_synthetic.py',
        {'data.num_clients': 200, 'clients_per_round': 100,
         'client.local_steps': 10, 'client.local_epochs': 0,
         'client.batch_size': 10, 'client.optimizer': 'sgd',
         'client.learning_rate': 0.01},
        min_speedup=10.0, rounds_per_call=20, calls=15, loop_rounds=9,
        floor_calls=51),
    'compute': Workload(
        'fedavg_digits.py',
        {'data.num_clients': 50, 'model': 'cnn', 'clients_per_round': 20,
         'client.local_steps': 10, 'client.local_epochs': 0,
         'client.batch_size': 32},
        min_speedup=1.0, rounds_per_call=3, calls=7, loop_rounds=9,
        floor_calls=7),
}


def publish(report: str, out: str | None) -> None:
  """Prints a benchmark's report, and writes it to ``out`` when given."""
  print(report)
  if out:
    with open(out, 'w') as f:
      f.write(report + '\n')


def configure(workload):
  """The experiment's ``get_config()`` with the workload's overrides (a
  workload of this script or of bench_peers.py), unsharded."""
  config = runpy.run_path(os.path.join(EXPERIMENTS,
                                       workload.experiment))['get_config']()
  for field, value in workload.overrides.items():
    set_field(config, field, value)
  config.shard = False
  config.progress = False
  return config


def build_experiment(workload: Workload) -> train.Experiment:
  return train.build(configure(workload))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  """Median wall milliseconds of ``fn()`` (its result blocked on)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def bench(name: str, workload: Workload, quick: bool) -> dict:
  """Measures one workload; returns one table row as a dict."""
  shrink = (lambda n: max(2, n // 3)) if quick else (lambda n: n)
  experiment = build_experiment(workload)
  config, data, client = experiment.config, experiment.data, experiment.client
  num_rounds = workload.rounds_per_call
  active = jnp.int32(num_rounds)

  # (a) fedround: compile once, warm up once, then time whole scanned calls.
  state, store = experiment.init_state()
  start = time.perf_counter()
  compiled = make_rounds(experiment.round.fn, num_rounds).lower(
      state, store, data, active).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  metrics = {}

  def fedround_call():  # the call donates ``state``: keep the returned one
    nonlocal state, store
    state, store, round_metrics = compiled(state, store, data, active)
    metrics.update(round_metrics)
    return state

  fedround_call()
  fedround_ms = median_ms(fedround_call, shrink(workload.calls)) / num_rounds
  idle = float(np.mean(metrics['idle_step_fraction']))

  # (b) and (c) on the cohort and params that round ``state.round`` would use.
  ids, present, keys, _ = experiment.round.cohort(state)
  ids, keys = ids[present], keys[present]
  params = state.params
  step, batches = jax.jit(client.step), jax.jit(client.batches)
  learning_rate = config.client.learning_rate
  loop = lambda: baselines.python_loop_round(
      client, params, data, ids, keys, client_learning_rate=learning_rate,
      step=step, batches=batches)
  loop()
  loop_ms = median_ms(loop, shrink(workload.loop_rounds))
  centralised = baselines.make_centralised(client, learning_rate)
  floor = lambda: centralised(params, data, ids, keys)
  floor()
  floor_ms = median_ms(floor, shrink(workload.floor_calls))

  speedup = loop_ms / fedround_ms
  floor_ratio = fedround_ms / floor_ms
  return dict(
      name=name, model=config.model, data=config.data.name,
      cohort=f'{int(present.sum())}x{client.num_steps}x'
             f'{config.client.batch_size}',
      fedround_ms=fedround_ms, loop_ms=loop_ms, floor_ms=floor_ms,
      speedup=speedup, floor_ratio=floor_ratio, compile_s=compile_s,
      stored=data.train.nbytes / data.train.padded_nbytes, idle=idle,
      argument_mib=memory.argument_size_in_bytes / MIB,
      temp_mib=memory.temp_size_in_bytes / MIB,
      total_mib=(memory.argument_size_in_bytes + memory.output_size_in_bytes
                 - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
      / MIB,
      speedup_ok=speedup >= workload.min_speedup,
      floor_ok=floor_ratio <= MAX_FLOOR_RATIO,
      min_speedup=workload.min_speedup)


REPLICA_SEEDS = 8
REPLICA_ROUNDS = 20
REPLICA_SCHEDULES = {'epochs': dict(local_epochs=20, local_steps=0),
                     'steps': dict(local_epochs=0, local_steps=100)}


def _synthetic_config(seed: int, rounds: int, schedule: str):
  config = runpy.run_path(os.path.join(EXPERIMENTS, 'fedavg_synthetic.py'))[
      'get_config']()
  config.seed, config.rounds = seed, rounds
  config.eval_every = config.checkpoint_every = rounds
  config.shard = config.progress = False
  config.client.update(REPLICA_SCHEDULES[schedule])
  return config


def _replicas_steady_ms(configs, repeats: int) -> tuple[float, float]:
  """Ms per round for all seeds: one compiled scan per seed vs vmapped."""
  experiment = train.build(configs[0])
  data, active = experiment.data, jnp.int32(REPLICA_ROUNDS)
  single = make_rounds(experiment.round.fn, REPLICA_ROUNDS).lower(
      *experiment.init_state(), data, active).compile()
  states = [experiment.init_state(c) for c in configs]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  vmapped = make_rounds(experiment.round.fn, REPLICA_ROUNDS,
                        replicas=True).lower(*stacked, data,
                                             active).compile()

  def one_by_one():
    nonlocal states
    states = [single(*s, data, active)[:2] for s in states]
    return states

  def together():
    nonlocal stacked
    stacked = vmapped(*stacked, data, active)[:2]
    return stacked

  one_by_one(), together()
  return (median_ms(one_by_one, repeats) / REPLICA_ROUNDS,
          median_ms(together, repeats) / REPLICA_ROUNDS)


def bench_replicas(quick: bool) -> dict:
  """S seeds of ``make run``'s config: one by one vs one vmapped call.

  Steady state, per schedule: the same compiled R-round scan called once
  per seed (seed and learning rates are state, so one compilation serves
  every seed) against the replica scan called once on the stacked states.
  End to end: ``train.run`` per seed (each builds and compiles) against one
  ``train.run_replicas``, both writing metrics and checkpoints.
  """
  seeds = REPLICA_SEEDS // 2 if quick else REPLICA_SEEDS
  repeats = 3 if quick else 5
  row = dict(seeds=seeds, rounds=REPLICA_ROUNDS)
  for schedule in REPLICA_SCHEDULES:
    row[schedule] = _replicas_steady_ms(
        [_synthetic_config(s, REPLICA_ROUNDS, schedule) for s in range(seeds)],
        repeats)
  configs = [_synthetic_config(s, REPLICA_ROUNDS, 'epochs')
             for s in range(seeds)]
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    for config in configs:
      train.run(config, os.path.join(tmp, 'alone', str(config.seed)))
    alone_s = time.perf_counter() - start
    start = time.perf_counter()
    train.run_replicas(configs, [os.path.join(tmp, 'together', str(c.seed))
                                 for c in configs])
    row['end_to_end'] = alone_s, time.perf_counter() - start
  return row


def format_replicas(row: dict) -> str:
  size = f'{row["seeds"]} x {row["rounds"]}'
  labels = {
      'epochs': 'steady state, E=20 epochs (uneven), ms/round, all seeds',
      'steps': 'steady state, K=100 steps (even), ms/round, all seeds',
      'end_to_end': 'end to end, E=20 (build, compile, train, checkpoint), s'}
  lines = ['| replicas | seeds x rounds | one by one | vmapped | speed-up |',
           '|---|---|---|---|---|']
  for key, label in labels.items():
    alone, together = row[key]
    lines.append(f'| {label} | {size} | {alone:.2f} | {together:.2f} | '
                 f'{alone / together:.2f}x |')
  return '\n'.join(lines + [
      '',
      f'replicas: {row["seeds"]} seeds of experiments/fedavg_synthetic.py '
      '(logistic, 10 of 30 clients per round), unsharded; one by one = the '
      'same compiled scan called per seed, or train.run per seed; vmapped = '
      'make_rounds(..., replicas=True), or train.run_replicas'])


def format_report(rows: list[dict], command: str) -> str:
  """The markdown table, the PASS/FAIL lines and the command."""
  header = ('| workload | model / data | C x K x B | (a) fedround ms | '
            '(b) loop ms | (c) centralised ms | (b)/(a) | (a)/(c) | '
            'compile s | stored / padded bytes | idle steps | arg MiB | temp MiB | '
            'total MiB |')
  lines = [header, '|' + '---|' * header.count(' | ') + '---|']
  for r in rows:
    lines.append(
        f'| {r["name"]} | {r["model"]} / {r["data"]} | {r["cohort"]} | '
        f'{r["fedround_ms"]:.2f} | {r["loop_ms"]:.2f} | {r["floor_ms"]:.2f} | '
        f'{r["speedup"]:.1f}x | {r["floor_ratio"]:.2f} | '
        f'{r["compile_s"]:.2f} | {r["stored"]:.1%} | {r["idle"]:.1%} | '
        f'{r["argument_mib"]:.1f} | {r["temp_mib"]:.1f} | '
        f'{r["total_mib"]:.1f} |')
  lines.append('')
  for r in rows:
    verdict = 'PASS' if r['speedup_ok'] and r['floor_ok'] else 'FAIL'
    lines.append(
        f'{verdict} {r["name"]}: (b)/(a) = {r["speedup"]:.1f}x '
        f'(target >= {r["min_speedup"]:g}x: '
        f'{"ok" if r["speedup_ok"] else "missed"}), (a)/(c) = '
        f'{r["floor_ratio"]:.2f} (target <= {MAX_FLOOR_RATIO:g}: '
        f'{"ok" if r["floor_ok"] else "missed"})')
  device = jax.devices()[0]
  lines += ['', f'jax {jax.__version__} on {len(jax.devices())} '
            f'{device.platform} device(s) ({device.device_kind}); ms are '
            'medians per round; memory is memory_analysis() of the compiled '
            '(a) call, total = arguments + outputs - donated aliases + temp',
            f'command: {command}']
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='fewer timed repetitions')
  parser.add_argument('--workload', choices=sorted(WORKLOADS) + ['replicas'],
                      action='append',
                      help='run only this workload (repeatable); default all')
  parser.add_argument('--out', help='also write the report to this file')
  args = parser.parse_args()
  names = args.workload or [*WORKLOADS, 'replicas']
  rows = [bench(name, WORKLOADS[name], args.quick)
          for name in names if name in WORKLOADS]
  command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
  report = format_report(rows, command) if rows else f'command: {command}'
  if 'replicas' in names:
    report = format_replicas(bench_replicas(args.quick)) + '\n\n' + report
  publish(report, args.out)


if __name__ == '__main__':
  main()
