"""Aggregation time and memory of every rule as C and d grow (`make bench`).

  .venv/bin/python scripts/bench_aggregators.py --out docs/bench_aggregators.md
  .venv/bin/python scripts/bench_aggregators.py --sharded   # 8 emulated devices

Each rule (with f = C // 10 where it takes f) aggregates a stack of C
updates of d float32 coordinates, jitted; a cell is the median time of a
call and the compiled call's temporary memory (XLA's memory_analysis). Sizes
whose stack exceeds --max_elements are skipped. Gram-based rules (Krum, GM,
centered clipping, Bulyan, MDA, MoNNA, NNM, Flag) should show memory
O(C^2 + C d), never O(C^2 d) or O(d^2).

--sharded places the stack along the mesh axis ``clients`` on 8 emulated CPU
devices and reports, per rule, the time and the largest difference from the
same rule on one device.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

if '--sharded' in sys.argv:  # before jax is imported
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from bench import publish  # noqa: E402  (scripts/, this script's dir)
from fedround.aggregators import build_aggregator  # noqa: E402
from fedround.registry import ConfigError  # noqa: E402

MIB = 2 ** 20
# Rule specs; {f} becomes C // 10 (at least 1).
RULES = (
    'mean', 'median', 'trimmed_mean(f={f})', 'meamed(f={f})', 'krum(f={f})',
    'multi_krum(f={f})', 'geometric_median', 'centered_clipping',
    'bulyan(f={b})', 'mda(f={f})', 'monna(f={f})', 'flag(rank=8)',
    'clip(max_norm=1) | mean', 'nnm(f={f}) | mean', 'bucketing(size=2) | mean',
    'arc(f={f}) | mean')
CLIENTS = (10, 100, 1000)
DIMENSIONS = (10 ** 4, 10 ** 5, 10 ** 6, 10 ** 7)


def spec_for(rule: str, clients: int) -> str:
  f = max(1, clients // 10)
  return rule.format(f=f, b=max(1, min(f, (clients - 3) // 4)))


def stack(clients: int, dimension: int, sharding=None):
  key = jax.random.PRNGKey(0)
  updates = {'w': jax.random.normal(key, (clients, dimension), jnp.float32)}
  weights = jnp.ones(clients, jnp.float32)
  if sharding is not None:
    updates, weights = jax.device_put((updates, weights), sharding)
  return updates, weights


def compiled_rule(rule: str, clients: int, updates, weights):
  aggregator = build_aggregator(spec_for(rule, clients), 'rule',
                                num_clients=clients)
  params = jax.tree.map(lambda u: u[0], updates)
  state = aggregator.init(params)

  def aggregate(updates, weights, state):
    return aggregator.update(updates, state, params, weights=weights,
                             key=jax.random.PRNGKey(1))[0]

  fn = jax.jit(aggregate).lower(updates, weights, state).compile()
  return (lambda: fn(updates, weights, state)), fn.memory_analysis()


def median_ms(fn, repeats: int, budget: float = float('inf')) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  if time.perf_counter() - start > budget:  # one more call is all we wait
    repeats = 1
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def scaling(rules, max_elements: float, repeats: int, budget: float) -> str:
  sizes = [(c, d) for c in CLIENTS for d in DIMENSIONS
           if c * d <= max_elements]
  header = ['rule'] + [f'C={c}, d=1e{int(np.log10(d))}' for c, d in sizes]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for rule in rules:
    cells, too_slow = [], None
    for clients, dimension in sizes:
      if too_slow and clients * dimension > too_slow:
        cells.append('slow')
        continue
      updates, weights = stack(clients, dimension)
      try:
        call, memory = compiled_rule(rule, clients, updates, weights)
      except ConfigError as e:
        cells.append('refused' if 'subsets' in str(e) else 'n/a')
        continue
      ms = median_ms(call, repeats, budget)
      if ms > 1000 * budget:
        too_slow = clients * dimension
      temp = memory.temp_size_in_bytes / (clients * dimension * 4)
      cells.append(f'{ms:.1f} ms, {temp:.2f}x')
      print(f'{rule} C={clients} d={dimension}: {cells[-1]}', file=sys.stderr,
            flush=True)
    lines.append('| ' + ' | '.join([spec_for(rule, 10).replace('|', r'\|'),
                                    *cells]) + ' |')
  return '\n'.join(lines + [
      '',
      'cell: median ms per aggregation, then temporary memory as a multiple '
      'of the stack (C x d x 4 bytes); f = C // 10 (Bulyan: at most '
      '(C - 3) // 4); "refused": MDA\'s C-choose-f subsets exceed its limit; '
      f'"slow": skipped after a smaller stack took over {budget:g} s a call. '
      f'Stacks above {max_elements:.0e} elements are skipped.'])


def sharded(clients: int, dimension: int, repeats: int) -> str:
  mesh = jax.make_mesh((8,), ('clients',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  on_mesh = NamedSharding(mesh, P('clients'))
  one_device = jax.devices()[0]
  lines = [f'| rule (C={clients}, d={dimension:.0e}) | one device ms | '
           '8 devices ms | max abs difference |', '|---|---|---|---|']
  for rule in RULES:
    try:
      single, _ = compiled_rule(rule, clients,
                                *stack(clients, dimension, one_device))
      spread, _ = compiled_rule(rule, clients,
                                *stack(clients, dimension, on_mesh))
    except ConfigError:
      lines.append(f'| {spec_for(rule, clients)} | n/a | n/a | n/a |')
      continue
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(jax.tree.leaves(single()),
                                     jax.tree.leaves(spread())))
    lines.append(f'| {spec_for(rule, clients).replace("|", chr(92) + "|")} | '
                 f'{median_ms(single, repeats):.1f} | '
                 f'{median_ms(spread, repeats):.1f} | {difference:.1e} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--max_elements', type=float, default=2.5e8,
                      help='largest C x d stack (default 1 GiB of float32)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--sharded', action='store_true',
                      help='compare 8 emulated devices with one')
  parser.add_argument('--budget', type=float, default=10.0,
                      help='seconds: a rule slower than this per call is '
                      'timed once and not run on larger stacks')
  parser.add_argument('--rules', default=None,
                      help='comma-separated indices into RULES (default all)')
  parser.add_argument('--out', help='also write the report to this file')
  args = parser.parse_args()
  rules = RULES if args.rules is None else [
      RULES[int(i)] for i in args.rules.split(',')]
  command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
  body = (sharded(128, 10 ** 5, args.repeats) if args.sharded
          else scaling(rules, args.max_elements, args.repeats, args.budget))
  report = (f'{body}\n\njax {jax.__version__} on {jax.device_count()} '
            f'{jax.devices()[0].platform} device(s)\ncommand: {command}')
  publish(report, args.out)


if __name__ == '__main__':
  main()
