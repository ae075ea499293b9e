"""Times fedround's FedAvg round side by side with FedJAX, DrJAX and the floor.

  .venv/bin/python scripts/bench_peers.py [--quick] [--out docs/bench_peers.md] \\
      [--workload NAME]

Per workload, fedround builds the federation and writes it with
``fedround.data.arrays.save``; the experiment that reads it back
(``data.name='npy'``) draws the cohorts of every timed round
(``Round.cohorts``), written as int32 [rounds, C], so that every program
trains the same clients each round:
  - fedround: ``make_rounds`` (jit of a scan over R rounds), call time / R;
  - FedJAX 0.0.17's ``federated_averaging`` (scripts/peers/fedjax_fedavg.py)
    and FedAvg in DrJAX 0.2.1's idiom (scripts/peers/drjax_fedavg.py), each
    run as a subprocess with the python of its own virtual environment,
    ``.bench/fedjax`` and ``.bench/drjax``, created here on first use (same
    jax as fedround's; a stamp file records what was installed);
  - the floor: one model trained on the round's real examples only, in
    batches of C * B. With local steps that is ``baselines.make_centralised``
    (K steps of C * B, every step full). With local epochs
    ``make_centralised`` would run the federation's longest schedule, its
    merged batches mostly masked lanes, so this script's ``epoch_floor``
    is used: the cohort's examples concatenated, E passes in
    ceil(E sum n_i / (C B)) steps of C * B, the last partial.
Every program times the same chunks of R rounds after a warm-up, in
passes that time every program in turn (a slow spell of a shared machine
falls on all); ms/round is the median over passes of the median over
chunks of chunk time / R. Everything runs on one CPU
device (XLA_FLAGS), without the persistent compilation cache, one program
after another. Targets (issue 18): fedround >= 10x faster than FedJAX,
>= 1.5x faster than DrJAX (its fastest variant), <= 2x the floor.
"""
from __future__ import annotations

import os
import re

# One CPU device for this process and every peer (not the tests' eight),
# and no persistent cache, so that compile times are compile times.
os.environ['XLA_FLAGS'] = re.sub(
    r'--xla_force_host_platform_device_count=\S+', '',
    os.environ.get('XLA_FLAGS', '')) + (
        ' --xla_force_host_platform_device_count=1')
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.pop('JAX_COMPILATION_CACHE_DIR', None)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench import configure, publish  # noqa: E402  (scripts/)
from fedround import baselines, train  # noqa: E402
from fedround.client import schedule_steps  # noqa: E402
from fedround.data import arrays  # noqa: E402
from fedround.rounds import make_rounds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPTS = os.path.join(ROOT, 'scripts', 'peers')
PEER_VENVS = os.path.join(ROOT, '.bench')
PEER_REQUIREMENTS = {'fedjax': ('fedjax==0.0.17', 'dm-haiku'),
                     'drjax': ('drjax==0.2.1',)}
MIN_SPEEDUP_VS_FEDJAX = 10.0
MIN_SPEEDUP_VS_DRJAX = 1.5
MAX_FLOOR_RATIO = 2.0


class Peer(NamedTuple):
  label: str
  venv: str             # under .bench/
  script: str           # under scripts/peers/
  arguments: tuple = ()


class Workload(NamedTuple):
  """An experiment config with overrides, and how long to time it."""
  description: str
  experiment: str        # file under experiments/
  overrides: dict        # dotted config field -> value
  rounds_per_call: int   # R: rounds per fedround call and per timed chunk
  calls: int             # timed chunks (--quick: QUICK_CALLS)
  peers: tuple


FEDJAX = Peer('FedJAX 0.0.17', 'fedjax', 'fedjax_fedavg.py')
DRJAX = Peer('DrJAX 0.2.1', 'drjax', 'drjax_fedavg.py')
QUICK_CALLS = 2
PASSES = 3  # each program timed this many times, in turn (--quick: 1)
SYNTHETIC = {'data.num_clients': 1000, 'model': 'logistic',
             'clients_per_round': 100, 'client.batch_size': 10,
             'client.optimizer': 'sgd', 'client.learning_rate': 0.01,
             'server.optimizer': 'sgd', 'server.learning_rate': 1.0}
WORKLOADS = {
    'epochs': Workload(
        'logistic regression on Synthetic(0.5, 0.5), 1000 clients '
        '(log-normal sizes), 100 a round, 1 local epoch of batch 10, '
        'client lr 0.01',
        'fedavg_synthetic.py',
        {**SYNTHETIC, 'client.local_epochs': 1, 'client.local_steps': 0},
        rounds_per_call=10, calls=6, peers=(FEDJAX, DRJAX)),
    'steps': Workload(
        'logistic regression on Synthetic(0.5, 0.5), 1000 clients '
        '(log-normal sizes), 100 a round, K=10 local steps of batch 10, '
        'client lr 0.01',
        'fedavg_synthetic.py',
        {**SYNTHETIC, 'client.local_epochs': 0, 'client.local_steps': 10},
        rounds_per_call=20, calls=6, peers=(FEDJAX, DRJAX)),
    'cnn': Workload(
        "fedround's cnn (conv 16, conv 32, dense 64) on digits "
        'Dirichlet(0.5), 50 clients, 20 a round, K=10 local steps of batch '
        '32, client lr 0.1',
        'fedavg_digits.py',
        {'data.num_clients': 50, 'model': 'cnn', 'clients_per_round': 20,
         'client.local_steps': 10, 'client.local_epochs': 0,
         'client.batch_size': 32, 'server.optimizer': 'sgd',
         'server.learning_rate': 1.0},
        rounds_per_call=10, calls=6,
        peers=(FEDJAX._replace(label='FedJAX 0.0.17, native conv '
                                      '(hk.Conv2D)'),
               DRJAX._replace(label='DrJAX 0.2.1, native conv',
                              arguments=('--conv', 'native')),
               DRJAX._replace(label="DrJAX 0.2.1, fedround's shifted conv",
                              arguments=('--conv', 'shifted')))),
}

# What each program computes per round, by schedule.
WORK = {
    'epochs': {
        'fedround': 'the cohort packed into L vmap lanes (client.lanes=0: '
                    'the most with <= 10% simulated idle), clients one '
                    'after another in a lane; client i: ceil(n_i/B) steps, '
                    'last batch partial (masked), each epoch in a keyed '
                    'order (swap-or-not)',
        'fedjax': 'Python loop over clients and batches, one jitted step a '
                  'batch; shuffle_repeat_batch(num_epochs=1): ceil(n_i/B) '
                  'full batches, the last filled from a second shuffle '
                  '(repeats counted), no padding',
        'drjax': 'map_fn (vmap) of a fori_loop to the cohort\'s longest '
                 'schedule, rows padded and masked (a vmapped padded loop); '
                 'shuffles drawn on the host each round, timed',
        'floor': 'epoch_floor: the cohort\'s examples concatenated, '
                 'ceil(sum n_i/(C B)) steps of C*B, last partial; indices '
                 'prepared before timing',
    },
    'steps': {
        'fedround': 'one vmap lane a client, K steps of B drawn '
                    'uniformly with replacement; no idle lanes',
        'fedjax': 'Python loop over clients and batches, one jitted step a '
                  'batch; shuffle_repeat_batch(num_epochs=None, '
                  'num_steps=K): K batches of B without replacement, '
                  'reshuffled each pass',
        'drjax': 'map_fn (vmap) of a fori_loop of K steps of B drawn '
                 'uniformly with replacement on the host each round, timed',
        'floor': 'baselines.make_centralised: K steps of C*B, every step '
                 'full',
    },
}


def peer_python(venv: str) -> str:
  """The python of ``.bench/<venv>``, created and installed on first use
  with fedround's jax version; reinstalled when its requirements change."""
  path = os.path.join(PEER_VENVS, venv)
  python = os.path.join(path, 'bin', 'python')
  requirements = [*PEER_REQUIREMENTS[venv], f'jax=={jax.__version__}']
  stamp = os.path.join(path, '.installed')
  if os.path.exists(stamp):
    with open(stamp) as f:
      if f.read().split() == requirements:
        return python
  print(f'installing {" ".join(requirements)} into {path}', file=sys.stderr)
  subprocess.run(['python3', '-m', 'venv', '--clear', path], check=True)
  subprocess.run([python, '-m', 'pip', 'install', '--quiet', *requirements],
                 check=True)
  with open(stamp, 'w') as f:
    f.write('\n'.join(requirements) + '\n')
  return python


def run_peer(peer: Peer, arguments: list[str]) -> dict:
  """The peer's JSON line, run in its own virtual environment."""
  python = peer_python(peer.venv)
  result = subprocess.run(
      [python, os.path.join(PEER_SCRIPTS, peer.script), *arguments,
       *peer.arguments], capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f'{peer.script} failed ({result.returncode}):\n'
                       f'{result.stderr[-4000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def chunked_ms(run_round, inputs: list, rounds_per_chunk: int) -> float:
  """Median over chunks of R rounds of the chunk's ms / R."""
  chunk_ms = []
  for begin in range(0, len(inputs), rounds_per_chunk):
    chunk = inputs[begin:begin + rounds_per_chunk]
    start = time.perf_counter()
    jax.block_until_ready([run_round(i) for i in chunk][-1])
    chunk_ms.append(1000 * (time.perf_counter() - start) / len(chunk))
  return statistics.median(chunk_ms)


def epoch_floor(client, learning_rate, epochs: int, merged_batch: int):
  """jit(params, x, y, rows, num_real) -> params: E passes over the
  ``num_real`` rows ``rows[:num_real]`` in steps of ``merged_batch``."""

  def floor(params, x, y, rows, num_real):
    total = epochs * num_real
    slots = jnp.arange(merged_batch)

    def body(k, carry):
      params, opt_state = carry
      position = k * merged_batch + slots
      idx = rows[position % num_real]
      valid = (position < total).astype(jnp.float32)
      params, opt_state, _ = client.step(params, opt_state, x[idx], y[idx],
                                         valid, learning_rate)
      return params, opt_state

    num_steps = (total + merged_batch - 1) // merged_batch
    return jax.lax.fori_loop(0, num_steps, body, (params, client.optimizer(
        learning_rate).init(params)))[0]

  return jax.jit(floor)


def floor_timer(experiment, cohorts: np.ndarray, rounds_per_chunk: int):
  """(compile s, timed): the floor compiled and warmed up on the timed
  rounds' cohorts; ``timed()`` -> its ms per round over them."""
  config, client, data = (experiment.config, experiment.client,
                          experiment.data)
  learning_rate = jnp.float32(config.client.learning_rate)
  params = experiment.init_state()[0].params
  merged_batch = cohorts.shape[1] * config.client.batch_size
  if config.client.local_steps:
    floor = baselines.make_centralised(client, learning_rate)
    keys = jax.random.split(jax.random.PRNGKey(0), cohorts.size).reshape(
        cohorts.shape + (-1,))
    inputs = [(data, jnp.asarray(ids), k) for ids, k in zip(cohorts, keys)]
  else:
    floor = epoch_floor(client, learning_rate, config.client.local_epochs,
                        merged_batch)
    start, n = np.asarray(data.train.start), np.asarray(data.train.n)
    rows = [np.concatenate([np.arange(start[i], start[i] + n[i])
                            for i in ids]) for ids in cohorts]
    longest = max(len(r) for r in rows)
    inputs = [(data.train.x, data.train.y,
               jnp.asarray(np.pad(r, (0, longest - len(r))), jnp.int32),
               jnp.int32(len(r))) for r in rows]
  begin = time.perf_counter()
  compiled = floor.lower(params, *inputs[0]).compile()
  compile_s = time.perf_counter() - begin
  compiled(params, *inputs[0])  # warm-up
  return compile_s, lambda: chunked_ms(lambda i: compiled(params, *i), inputs,
                                       rounds_per_chunk)


def rounds_timer(experiment, rounds: int):
  """(compiled, compile s, timed): ``make_rounds`` of the experiment's round
  over ``rounds`` rounds, compiled and warmed up once from its initial state;
  ``timed(calls)`` -> (ms/round of each call, each call's metrics, the store
  after) calls it ``calls`` times in a row, from (a copy of) the state the
  warm-up left, so that every pass trains the same rounds."""
  state, store = experiment.init_state()
  data, active = experiment.data, jnp.int32(rounds)
  begin = time.perf_counter()
  compiled = make_rounds(experiment.round.fn, rounds).lower(
      state, store, data, active).compile()
  compile_s = time.perf_counter() - begin
  warm = compiled(state, store, data, active)[:2]

  def timed(calls: int):
    state, store = jax.tree.map(jnp.copy, warm)  # the call donates them
    call_ms, metrics = [], []
    for _ in range(calls):
      begin = time.perf_counter()
      state, store, call_metrics = jax.block_until_ready(
          compiled(state, store, data, active))
      call_ms.append(1000 * (time.perf_counter() - begin) / rounds)
      metrics.append(call_metrics)
    return call_ms, metrics, store

  return compiled, compile_s, timed


def time_rounds(experiment, rounds: int, calls: int):
  """(compiled, compile s, ms/round of each call, each call's metrics, the
  store after): ``rounds_timer``'s program timed once."""
  compiled, compile_s, timed = rounds_timer(experiment, rounds)
  return (compiled, compile_s, *timed(calls))


def cohort_work(config, n: np.ndarray, cohorts: np.ndarray) -> dict:
  """fedround's work per timed round: local steps and examples in
  gradients."""
  batch, epochs, steps = (config.client.batch_size,
                          config.client.local_epochs,
                          config.client.local_steps)
  sizes = n[cohorts]
  per_client = schedule_steps(sizes, batch_size=batch, local_steps=steps,
                              local_epochs=epochs)
  examples = (steps * batch * np.ones_like(sizes) if steps else
              epochs * sizes)
  return dict(steps=per_client.sum(1), examples=examples.sum(1))


def bench(name: str, workload: Workload, quick: bool) -> dict:
  """Times every program of one workload; returns its report's rows."""
  config = configure(workload)
  rounds = workload.rounds_per_call
  calls = QUICK_CALLS if quick else workload.calls
  passes = 1 if quick else PASSES
  schedule = 'steps' if config.client.local_steps else 'epochs'
  with tempfile.TemporaryDirectory() as tmp:
    federation_dir = os.path.join(tmp, 'federation')
    arrays.save(train.load_federation(config), federation_dir)
    config.data = ml_collections.ConfigDict({'name': 'npy',
                                             'path': federation_dir})
    experiment = train.build(config)
    state, store = experiment.init_state()
    # Round 0 .. R-1 warm up; the timed rounds follow.
    cohorts = np.asarray(jax.jit(experiment.round.cohorts, static_argnums=1)(
        state, rounds * (calls + 1)))[rounds:]
    cohorts_file = os.path.join(tmp, 'cohorts.npy')
    np.save(cohorts_file, cohorts.astype(np.int32))

    data = experiment.data
    _, compile_s, timed = rounds_timer(experiment, rounds)
    floor_compile_s, timed_floor = floor_timer(experiment, cohorts, rounds)
    arguments = ['--data', federation_dir, '--cohorts', cohorts_file,
                 '--model', config.model,
                 '--batch-size', str(config.client.batch_size),
                 '--local-epochs', str(config.client.local_epochs),
                 '--local-steps', str(config.client.local_steps),
                 '--learning-rate', str(config.client.learning_rate),
                 '--rounds-per-chunk', str(rounds)]
    # Every pass times every program once, one after another, so that a
    # slow spell of this shared machine falls on all of them.
    fedround_ms, floor_ms, peer_results = [], [], []
    for _ in range(passes):
      call_ms, metrics, _ = timed(calls)
      fedround_ms.append(statistics.median(call_ms))
      floor_ms.append(timed_floor())
      peer_results.append([run_peer(peer, arguments)
                           for peer in workload.peers])
  stacked = lambda name: np.concatenate([np.asarray(m[name])
                                         for m in metrics])
  idle, steps, lane_steps = (stacked('idle_step_fraction'),
                             stacked('local_steps'), stacked('lane_steps'))
  work = cohort_work(config, np.asarray(data.train.n), cohorts)
  if not np.array_equal(steps, work['steps']):
    raise RuntimeError('the exported cohorts are not the rounds fedround '
                       'trained: their local steps differ')
  mean = lambda a: float(np.mean(a))
  rows = [dict(label='fedround', ms=fedround_ms, compile_s=compile_s,
               steps=mean(work['steps']), lane_steps=mean(lane_steps),
               examples=mean(work['examples']),
               work=WORK[schedule]['fedround'], kind='fedround')]
  merged_batch = cohorts.shape[1] * config.client.batch_size
  floor_steps = (config.client.local_steps
                 or -(-work['examples'] // merged_batch))
  rows.append(dict(label='floor (one model, batch C*B)', ms=floor_ms,
                   compile_s=floor_compile_s, steps=mean(floor_steps),
                   lane_steps=mean(floor_steps),
                   examples=mean(work['examples']),
                   work=WORK[schedule]['floor'], kind='floor'))
  versions = {}
  for peer, results in zip(workload.peers, zip(*peer_results)):
    result = results[0]
    versions[peer.venv] = result['jax']
    rows.append(dict(label=peer.label, ms=[r['ms_per_round'] for r in results],
                     compile_s=result['compile_s'], steps=result['steps'],
                     lane_steps=result['lane_steps'],
                     examples=result['examples'],
                     work=WORK[schedule][peer.venv], kind=peer.venv))
  for row in rows:  # each program's passes: their median and range
    row['range'] = (min(row['ms']), max(row['ms']))
    row['ms'] = statistics.median(row['ms'])
  return dict(name=name, description=workload.description, rows=rows,
              idle=mean(idle), timed_rounds=len(cohorts), rounds=rounds,
              passes=passes, versions=versions)


def verdict(ok: bool) -> str:
  return 'met' if ok else 'missed'


def format_workload(result: dict) -> str:
  """One workload's table and its target lines."""
  rows = result['rows']
  by_kind = lambda kind: [r for r in rows if r['kind'] == kind]
  fedround_ms = by_kind('fedround')[0]['ms']
  lines = [f'### {result["name"]}: {result["description"]}', '',
           f'{result["timed_rounds"]} timed rounds in chunks of '
           f'{result["rounds"]}, the same cohorts for every program; '
           f'{result["passes"]} pass(es), each timing every program in turn.',
           '',
           '| program | ms/round | its range over passes | compile s | '
           'local steps/round | lane-steps/round | examples/round | '
           'ms / fedround\'s | what it computes |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["label"]} | {r["ms"]:.2f} | {r["range"][0]:.2f}-'
        f'{r["range"][1]:.2f} | {r["compile_s"]:.2f} | '
        f'{r["steps"]:.0f} | {r["lane_steps"]:.0f} | {r["examples"]:.0f} | '
        f'{r["ms"] / fedround_ms:.2f}x | {r["work"]} |')
  fedjax_ms = by_kind('fedjax')[0]['ms']
  drjax_ms = min(r['ms'] for r in by_kind('drjax'))
  floor_ratio = fedround_ms / by_kind('floor')[0]['ms']
  lines += [
      '',
      f'fedround / floor = {floor_ratio:.2f}; fedround idle_step_fraction '
      f'(mean) = {result["idle"]:.1%}',
      '',
      f'- fedround >= {MIN_SPEEDUP_VS_FEDJAX:g}x faster than FedJAX: '
      f'{fedjax_ms / fedround_ms:.1f}x, '
      f'{verdict(fedjax_ms / fedround_ms >= MIN_SPEEDUP_VS_FEDJAX)}',
      f'- fedround >= {MIN_SPEEDUP_VS_DRJAX:g}x faster than DrJAX (its '
      f'fastest variant): {drjax_ms / fedround_ms:.2f}x, '
      f'{verdict(drjax_ms / fedround_ms >= MIN_SPEEDUP_VS_DRJAX)}',
      f'- fedround <= {MAX_FLOOR_RATIO:g}x the floor: {floor_ratio:.2f}x, '
      f'{verdict(floor_ratio <= MAX_FLOOR_RATIO)}']
  return '\n'.join(lines)


def format_report(results: list[dict], command: str) -> str:
  versions = {venv: v for r in results for venv, v in r['versions'].items()}
  peer_versions = ', '.join(
      f'.bench/{venv}: {" ".join(PEER_REQUIREMENTS[venv][:1])}, jax {v}'
      for venv, v in sorted(versions.items()))
  return '\n\n'.join([format_workload(r) for r in results] + [
      'local steps: steps with at least one real example, summed over '
      'clients; lane-steps: client steps the program computes, masked ones '
      'included; examples: rows that enter a gradient (repeats counted, '
      'padding not); ms/round: the median over passes of a pass\'s median '
      'over chunks of the chunk\'s time / R, compile excluded (FedJAX: its '
      'warm-up round less the median round; compile s from the first '
      'pass).',
      f'command: {command}  \ndate: '
      f'{datetime.datetime.now().isoformat(timespec="minutes")}  \n'
      f'versions: fedround .venv: jax {jax.__version__}; {peer_versions}; '
      f'one CPU device ({os.cpu_count()} cores)'])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help=f'{QUICK_CALLS} timed chunks instead of '
                      'the workload\'s')
  parser.add_argument('--workload', choices=sorted(WORKLOADS),
                      action='append',
                      help='run only this workload (repeatable); default all')
  parser.add_argument('--out', help='also write the report to this file')
  args = parser.parse_args()
  results = [bench(name, WORKLOADS[name], args.quick)
             for name in args.workload or WORKLOADS]
  command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
  report = format_report(results, command)
  publish(report, args.out)


if __name__ == '__main__':
  main()
