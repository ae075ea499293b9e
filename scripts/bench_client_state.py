"""Memory and time of per-client state at scale: N clients of a ~100k
parameter MLP, each client algorithm in its own process, side by side.

  .venv/bin/python scripts/bench_client_state.py [--clients 10000] \
      [--cohort 100] [--out docs/bench_client_state.md]

Per algorithm: the bytes of the per-client store (own state and, for
DiLoCo, the inner AdamW state of all N clients), XLA's accounting of the
compiled scan of rounds (arguments, outputs, temporaries, and the bytes it
aliases, i.e. updates in place), the process's peak resident memory, and
milliseconds per round. The data are Gaussian features with random labels,
20 examples per client: the store, not the data, is what is measured.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np
import optax

from fedround.aggregators import build_aggregator
from fedround.client import make_client
from fedround.client_algorithms import CLIENT_ALGORITHMS, init_store
from fedround.data import ClientData, FederatedData, uniform
from fedround.messages import identity
from fedround.models import MODELS
from fedround.optimizers import build_optimizer
from fedround.rounds import make_round, make_rounds
from fedround.server import init_server_state, optimizer_step

ALGORITHMS = {  # name -> (client algorithm, client optimizer)
    'fedavg': ('fedavg', 'sgd'),
    'scaffold': ('scaffold', 'sgd'),
    'scaffold_m': ('scaffold_m(beta=0.1)', 'sgd'),
    'diloco': ('diloco', 'adamw'),
}
MODEL = 'mlp(hidden=(400, 190))'  # 102,500 parameters on 60 features
FEATURES, EXAMPLES, CLASSES, ROUNDS = 60, 20, 10, 5
GIB = 2 ** 30


def gaussian_federation(num_clients: int) -> FederatedData:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(num_clients, EXAMPLES, FEATURES)).astype(np.float32)
  y = rng.integers(0, CLASSES, (num_clients, EXAMPLES)).astype(np.int32)
  return FederatedData(
      train=ClientData.from_padded(x, y, np.full(num_clients, EXAMPLES)),
      test_x=x[0], test_y=y[0], num_classes=CLASSES)


def measure(name: str, num_clients: int, cohort: int) -> dict:
  """One algorithm in this process: store size, XLA memory, time."""
  spec, optimizer_spec = ALGORITHMS[name]
  algorithm = CLIENT_ALGORITHMS.build(spec, 'algorithm')
  optimizer = build_optimizer(optimizer_spec, 'optimizer')
  data = jax.device_put(gaussian_federation(num_clients))
  model = MODELS.build(MODEL, 'model', num_classes=CLASSES)
  client = make_client(model.apply, optimizer, batch_size=10,
                       max_examples=EXAMPLES, local_steps=5,
                       algorithm=algorithm)
  aggregator = build_aggregator('weighted_mean')
  round_ = make_round(client=client, message=identity(),
                      aggregator=aggregator,
                      server_update=optimizer_step(optax.sgd),
                      participation=uniform(num_clients, cohort))
  params = model.init(jax.random.PRNGKey(0), data.train.x[:1])
  state = init_server_state(
      params, server_update=optimizer_step(optax.sgd),
      aggregator=aggregator,
      key=jax.random.PRNGKey(1), client_learning_rate=0.01,
      server_learning_rate=1.0, shared=algorithm.init_shared(params))
  store = init_store(algorithm, params, num_clients, optimizer)
  parameters = sum(x.size for x in jax.tree.leaves(params))
  store_bytes = sum(x.nbytes for x in jax.tree.leaves(store))
  compiled = make_rounds(round_.fn, ROUNDS).lower(
      state, store, data, np.int32(ROUNDS)).compile()
  memory = compiled.memory_analysis()
  state, store, _ = compiled(state, store, data, np.int32(ROUNDS))  # warm-up
  jax.block_until_ready(state)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    state, store, _ = compiled(state, store, data, np.int32(ROUNDS))
    jax.block_until_ready(state)
    times.append((time.perf_counter() - start) / ROUNDS)
  return {
      'algorithm': name, 'clients': num_clients, 'parameters': parameters,
      'store_gib': store_bytes / GIB,
      'arguments_gib': memory.argument_size_in_bytes / GIB,
      'aliased_gib': memory.alias_size_in_bytes / GIB,
      'temporaries_gib': memory.temp_size_in_bytes / GIB,
      'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      * 1024 / GIB,
      'ms_per_round': 1e3 * float(np.median(times)),
  }


def markdown(rows: list[dict], command: str) -> str:
  lines = [f'`{command}` on {jax.devices()[0].platform.upper()}, one '
           f'device; {rows[0]["clients"]} clients of a '
           f'{rows[0]["parameters"]:,}-parameter MLP.', '',
           '| algorithm | store GiB | XLA arguments GiB | aliased (in place) '
           'GiB | temporaries GiB | peak RSS GiB | ms / round |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["algorithm"]} | {r["store_gib"]:.2f} | '
        f'{r["arguments_gib"]:.2f} | {r["aliased_gib"]:.2f} | '
        f'{r["temporaries_gib"]:.3f} | {r["peak_rss_gib"]:.2f} | '
        f'{r["ms_per_round"]:.1f} |')
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--clients', type=int, default=10_000)
  parser.add_argument('--cohort', type=int, default=100)
  parser.add_argument('--algorithms', default=','.join(ALGORITHMS))
  parser.add_argument('--out', default=None, help='markdown file to write')
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:  # the child process: measure one algorithm, print JSON
    print(json.dumps(measure(args.one, args.clients, args.cohort)))
    return
  rows = []
  for name in args.algorithms.split(','):
    if name not in ALGORITHMS:
      sys.exit(f'--algorithms: unknown {name!r}; valid: '
               f'{", ".join(ALGORITHMS)}')
    out = subprocess.run(
        [sys.executable, __file__, '--one', name, '--clients',
         str(args.clients), '--cohort', str(args.cohort)],
        check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(rows[-1]), flush=True)
  text = markdown(rows, 'python scripts/bench_client_state.py ' +
                  ' '.join(sys.argv[1:]))
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text, end='')


if __name__ == '__main__':
  main()
