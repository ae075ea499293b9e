"""How fedround's round scales: cohort size, model size, devices, peers.

  .venv/bin/python scripts/bench_scale.py [--quick] \\
      [--out docs/bench_scale.md] [--plot docs/bench_scale.png]

Three sweeps on bench_peers.py's workloads (K=10 local steps of batch 10):
  - peers: ms/round against clients per round (10 to 300 of Synthetic's
    1000) for fedround, FedJAX, DrJAX and the floor, each timed by
    bench_peers.bench on the same cohorts;
  - devices: fedround's compile time, ms/round and XLA temporary memory
    against clients per round on 1 and on 8 emulated CPU devices
    (``config.shard``), each in a subprocess started with its device count.
    The 8 devices share this machine's cores, so the sweep shows that the
    sharded round compiles and runs at every size and what partitioning
    costs, not a speed-up;
  - models: compile time against model size at 20 clients a round
    (logistic regression and the MLP on Synthetic, the CNN on digits), and
    the per-client store's bytes per client under SCAFFOLD (a control
    variate the size of the model) against FedAvg's (none).
The plot shows the first two sweeps. Every program runs without the
persistent compilation cache.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

DEVICES = (1, 8)
COHORTS = (10, 30, 100, 300)
QUICK_COHORTS = (10, 100)
MODELS = (('steps', 'logistic'), ('steps', 'mlp'), ('cnn', 'cnn'))
MODEL_COHORT = 20
POINT_ROUNDS = 10  # rounds per call of a device-sweep point
POINT_CALLS = 4


def point(workload_name: str, model: str, clients: int, devices: int,
          algorithm: str) -> dict:
  """One fedround measurement, in this process (its device count set)."""
  flags = os.environ.get('XLA_FLAGS', '')
  from bench_peers import WORKLOADS, time_rounds  # scripts/; one device
  os.environ['XLA_FLAGS'] = flags    # before jax starts its backend
  import jax
  import numpy as np
  from bench import configure
  from fedround import train

  workload = WORKLOADS[workload_name]
  config = configure(workload._replace(overrides={
      **workload.overrides, 'clients_per_round': clients, 'model': model,
      'client.algorithm': algorithm}))
  config.shard = devices > 1
  experiment = train.build(config)
  compiled, compile_s, call_ms, _, store = time_rounds(
      experiment, POINT_ROUNDS, POINT_CALLS)
  memory = compiled.memory_analysis()
  leaves = jax.tree.leaves(store)
  return dict(
      devices=len(jax.devices()), clients=clients, model=model,
      algorithm=algorithm, compile_s=compile_s,
      ms=float(np.median(call_ms)),
      temp_mib=memory.temp_size_in_bytes / 2 ** 20,
      params=sum(p.size for p in jax.tree.leaves(
          experiment.init_state()[0].params)),
      store_bytes_per_client=sum(a.nbytes for a in leaves)
      / experiment.data.num_clients)


def run_point(workload_name: str, model: str, clients: int, devices: int,
              algorithm: str = 'fedavg') -> dict:
  """``point`` in a subprocess with ``devices`` emulated CPU devices."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 os.environ.get('XLA_FLAGS', ''))
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'{flags} --xla_force_host_platform_device_count={devices}'))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--point', json.dumps(
          [workload_name, model, clients, devices, algorithm])],
      capture_output=True, text=True, env=env)
  if result.returncode:
    raise RuntimeError(f'point {workload_name} {model} C={clients} '
                       f'D={devices} failed:\n{result.stderr[-4000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def peer_sweep(cohorts, quick: bool) -> list[dict]:
  """bench_peers' steps workload at each cohort size: {clients, program:
  ms}."""
  from bench_peers import WORKLOADS, bench
  workload = WORKLOADS['steps']
  rows = []
  for clients in cohorts:
    result = bench(f'steps, C={clients}', workload._replace(overrides={
        **workload.overrides, 'clients_per_round': clients}), quick)
    rows.append(dict(clients=clients, **{r['kind']: r['ms']
                                         for r in result['rows']}))
  return rows


def plot(peers: list[dict], devices: list[dict], path: str) -> None:
  from matplotlib.figure import Figure
  figure = Figure(figsize=(10, 4), layout='constrained')
  left, right = figure.subplots(1, 2)
  labels = {'fedround': 'fedround', 'fedjax': 'FedJAX 0.0.17',
            'drjax': 'DrJAX 0.2.1', 'floor': 'floor (one model, C*B)'}
  clients = [r['clients'] for r in peers]
  for kind, label in labels.items():
    left.plot(clients, [r[kind] for r in peers], 'o-', label=label)
  left.set(xscale='log', yscale='log', xlabel='clients per round',
           ylabel='ms / round (median)',
           title='FedAvg, K=10 steps of batch 10, logistic, 1 CPU device')
  left.legend()
  for count in DEVICES:
    rows = [r for r in devices if r['devices'] == count]
    right.plot([r['clients'] for r in rows], [1000 / r['ms'] for r in rows],
               'o-', label=f'{count} device{"s" * (count > 1)}')
  right.set(xscale='log', yscale='log', xlabel='clients per round',
            ylabel='rounds / s', title='fedround, 1 and 8 emulated devices '
            f'({os.cpu_count()} cores)')
  right.legend()
  figure.savefig(path, dpi=120)


def format_report(peers, devices, models, command: str) -> str:
  import datetime
  lines = ['### ms/round against clients per round (bench_peers steps '
           'workload, one CPU device)', '',
           '| clients/round | fedround | FedJAX | DrJAX | floor | FedJAX / '
           'fedround | DrJAX / fedround | fedround / floor |',
           '|---|---|---|---|---|---|---|---|']
  for r in peers:
    lines.append(
        f'| {r["clients"]} | {r["fedround"]:.2f} | {r["fedjax"]:.1f} | '
        f'{r["drjax"]:.2f} | {r["floor"]:.2f} | '
        f'{r["fedjax"] / r["fedround"]:.1f}x | '
        f'{r["drjax"] / r["fedround"]:.2f}x | '
        f'{r["fedround"] / r["floor"]:.2f}x |')
  lines += ['', '### fedround on 1 and 8 emulated devices', '',
            '| clients/round | devices | compile s | ms/round | rounds/s | '
            'XLA temp MiB | temp KiB / client |', '|---|---|---|---|---|---|---|']
  for r in devices:
    lines.append(
        f'| {r["clients"]} | {r["devices"]} | {r["compile_s"]:.2f} | '
        f'{r["ms"]:.2f} | {1000 / r["ms"]:.1f} | {r["temp_mib"]:.2f} | '
        f'{1024 * r["temp_mib"] / r["clients"]:.1f} |')
  lines += ['', f'### Model size ({MODEL_COHORT} clients a round, one '
            'device)', '',
            '| model | parameters | client algorithm | compile s | ms/round | '
            'store bytes / client |', '|---|---|---|---|---|---|']
  for r in models:
    lines.append(
        f'| {r["model"]} | {r["params"]:,} | {r["algorithm"]} | '
        f'{r["compile_s"]:.2f} | {r["ms"]:.2f} | '
        f'{r["store_bytes_per_client"]:,.0f} |')
  lines += ['', 'The 8 emulated devices share the machine\'s '
            f'{os.cpu_count()} cores: their rows show that the sharded round '
            'compiles and runs at each size and what partitioning costs, '
            'not a speed-up. XLA temp: the compiled R-round call\'s '
            'temporary buffers (on 8 devices, per device).', '',
            f'command: {command}  \ndate: '
            f'{datetime.datetime.now().isoformat(timespec="minutes")}']
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help=f'cohorts {QUICK_COHORTS} and fewer timed calls')
  parser.add_argument('--out', help='also write the report to this file')
  parser.add_argument('--plot', help='write the plot (PNG) to this file')
  parser.add_argument('--point', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.point:
    print(json.dumps(point(*json.loads(args.point))))
    return
  cohorts = QUICK_COHORTS if args.quick else COHORTS
  devices = [run_point('steps', 'logistic', clients, count)
             for count in DEVICES for clients in cohorts]
  models = [run_point(workload, model, MODEL_COHORT, 1, algorithm)
            for workload, model in MODELS
            for algorithm in ('fedavg', 'scaffold')]
  peers = peer_sweep(cohorts, args.quick)
  if args.plot:
    plot(peers, devices, args.plot)
  from bench import publish
  publish(format_report(peers, devices, models, shlex.join(
      [os.path.relpath(sys.executable), *sys.argv])), args.out)


if __name__ == '__main__':
  main()
