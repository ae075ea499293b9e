"""FedAvg written in DrJAX 0.2.1's idiom, timed on a fedround federation.

Run by scripts/bench_peers.py with the python of ``.bench/drjax`` (drjax and
jax only; numpy reads the federation, fedround is not imported):

  .bench/drjax/bin/python scripts/peers/drjax_fedavg.py --data DIR \\
      --cohorts FILE --model logistic --batch-size 10 --local-epochs 1 \\
      --learning-rate 0.01 --rounds-per-chunk 10

One round is one jitted ``drjax.program(placements={'clients': C})``:
``drjax.broadcast`` of the model, ``drjax.map_fn`` of local SGD (a vmap of
a ``fori_loop``), ``drjax.reduce_weighted_mean`` of the deltas weighted by
n_i, and the server step with learning rate 1. The federation's rows stay
on the device; each round the host draws every client's row indices with
numpy, padded to the schedule's longest client, and the loop runs to the
cohort's longest schedule (a traced bound, so one compilation serves every
round): a vmapped padded loop, whose shorter clients compute masked steps.
Local epochs: E shuffled passes of ceil(n_i / B) batches, the last partial
(masked), as fedround. Local steps: K batches of B drawn uniformly with
replacement. The timed round includes the host's index draws and their
transfer. Prints one JSON line.
"""
from __future__ import annotations

import json
import math
import statistics
import time

import drjax
import jax
import jax.numpy as jnp
import numpy as np

from common import argument_parser, load_federation


def native_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO',
                                                         'NHWC'))


def shifted_conv(x, kernel):
  """SAME 3x3 convolution as nine shifted matmuls (fedround's CPU conv)."""
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = x.shape[1:3]
  return sum(padded[:, i:i + height, j:j + width, :] @ kernel[i, j]
             for i in range(3) for j in range(3))


def init_params(model: str, example_shape, num_classes: int, key):
  """fedround's ``logistic`` or ``cnn`` (16, 32 channels, dense 64)."""
  def dense(key, fan_in, fan_out):
    return {'w': jax.random.normal(key, (fan_in, fan_out)) / fan_in ** 0.5,
            'b': jnp.zeros(fan_out)}
  keys = jax.random.split(key, 4)
  if model == 'logistic':
    return {'out': dense(keys[0], math.prod(example_shape), num_classes)}
  height, width, channels = example_shape
  conv = lambda key, cin, cout: {
      'w': jax.random.normal(key, (3, 3, cin, cout)) / (9 * cin) ** 0.5,
      'b': jnp.zeros(cout)}
  return {'conv0': conv(keys[0], channels, 16), 'conv1': conv(keys[1], 16, 32),
          'hidden': dense(keys[2], height // 4 * (width // 4) * 32, 64),
          'out': dense(keys[3], 64, num_classes)}


def make_apply(conv):
  """apply(params, x) -> logits, with ``conv`` for the convolutions."""
  def apply(params, x):
    if 'conv0' in params:
      for layer in ('conv0', 'conv1'):
        x = jax.nn.relu(conv(x, params[layer]['w']) + params[layer]['b'])
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
      x = x.reshape(x.shape[0], -1)
      x = jax.nn.relu(x @ params['hidden']['w'] + params['hidden']['b'])
    x = x.reshape(x.shape[0], -1)
    return x @ params['out']['w'] + params['out']['b']
  return apply


def make_round(apply, num_clients: int, batch_size: int,
               learning_rate: float):
  """jit(params, x, y, rows, valid, num_steps, weights) -> params."""

  def loss(params, x, y, valid):
    log_p = jax.nn.log_softmax(apply(params, x))
    nll = -jnp.take_along_axis(log_p, y[:, None], axis=1)[:, 0]
    return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)

  @drjax.program(placements={'clients': num_clients})
  def fedavg_round(params, x, y, rows, valid, num_steps, weights):
    def local_sgd(start, client_rows, client_valid):
      def step(k, p):
        idx = jax.lax.dynamic_slice_in_dim(client_rows, k * batch_size,
                                           batch_size)
        mask = jax.lax.dynamic_slice_in_dim(client_valid, k * batch_size,
                                            batch_size)
        grads = jax.grad(loss)(p, x[idx], y[idx], mask.astype(jnp.float32))
        return jax.tree.map(lambda a, g: a - learning_rate * g, p, grads)
      trained = jax.lax.fori_loop(0, num_steps, step, start)
      return jax.tree.map(jnp.subtract, trained, start)

    deltas = drjax.map_fn(local_sgd, (drjax.broadcast(params), rows, valid))
    mean_delta = drjax.reduce_weighted_mean(
        deltas, jax.tree.map(lambda _: weights, deltas))
    return jax.tree.map(jnp.add, params, mean_delta)

  return jax.jit(fedavg_round)


def schedule_steps(n: int, args) -> int:
  """A client's local steps: K, or E passes of ceil(n / B) batches."""
  return args.local_steps or args.local_epochs * -(-n // args.batch_size)


def client_schedule(rng, start: int, n: int, args):
  """(rows, valid): the flat row indices one client's local steps read."""
  if args.local_steps:
    rows = start + rng.integers(0, n, args.local_steps * args.batch_size)
    return rows, np.ones(rows.size, bool)
  per_epoch = -(-n // args.batch_size) * args.batch_size
  rows = [np.pad(start + rng.permutation(n), (0, per_epoch - n),
                 constant_values=start) for _ in range(args.local_epochs)]
  valid = np.tile(np.arange(per_epoch) < n, args.local_epochs)
  return np.concatenate(rows), valid


def main() -> None:
  parser = argument_parser(__doc__.split('\n')[0])
  parser.add_argument('--conv', choices=('native', 'shifted'),
                      default='native')
  args = parser.parse_args()
  num_classes, x, y, start, n = load_federation(args.data)
  x, y = jnp.asarray(x), jnp.asarray(y)
  cohorts = np.load(args.cohorts)
  num_clients = cohorts.shape[1]
  rng = np.random.default_rng(0)
  longest = args.batch_size * max(schedule_steps(int(n[i]), args)
                                  for i in np.unique(cohorts))

  def round_inputs(ids):
    """The cohort's padded rows and masks, its longest schedule, its work."""
    rows = np.zeros((num_clients, longest), np.int32)
    valid = np.zeros((num_clients, longest), bool)
    for c, i in enumerate(ids):
      r, v = client_schedule(rng, int(start[i]), int(n[i]), args)
      rows[c, :r.size], valid[c, :v.size] = r, v
    steps = [schedule_steps(int(n[i]), args) for i in ids]
    work = dict(steps=sum(steps), lane_steps=num_clients * max(steps),
                examples=int(valid.sum()))
    return (jnp.asarray(rows), jnp.asarray(valid), jnp.int32(max(steps)),
            jnp.asarray(n[ids], jnp.float32)), work

  conv = {'native': native_conv, 'shifted': shifted_conv}[args.conv]
  params = init_params(args.model, x.shape[1:], num_classes,
                       jax.random.PRNGKey(0))
  fedavg_round = make_round(make_apply(conv), num_clients, args.batch_size,
                            args.learning_rate)
  inputs, _ = round_inputs(cohorts[0])
  begin = time.perf_counter()
  compiled = fedavg_round.lower(params, x, y, *inputs).compile()
  compile_s = time.perf_counter() - begin
  jax.block_until_ready(compiled(params, x, y, *inputs))  # warm-up

  chunk_ms, works = [], []
  for chunk in np.split(cohorts, len(cohorts) // args.rounds_per_chunk):
    begin = time.perf_counter()
    for ids in chunk:
      inputs, work = round_inputs(ids)
      params = compiled(params, x, y, *inputs)
      works.append(work)
    jax.block_until_ready(params)
    chunk_ms.append(1000 * (time.perf_counter() - begin) / len(chunk))
  print(json.dumps(dict(
      program='drjax', conv=args.conv, drjax=drjax.__version__,
      jax=jax.__version__, ms_per_round=statistics.median(chunk_ms),
      compile_s=compile_s, rounds=len(cohorts),
      **{k: statistics.mean(w[k] for w in works) for k in works[0]})))


if __name__ == '__main__':
  main()
