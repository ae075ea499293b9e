"""FedJAX 0.0.17's own FedAvg, timed on a fedround federation.

Run by scripts/bench_peers.py with the python of ``.bench/fedjax``
(fedjax, dm-haiku, jax; numpy reads the federation, fedround is not
imported):

  .bench/fedjax/bin/python scripts/peers/fedjax_fedavg.py --data DIR \\
      --cohorts FILE --model logistic --batch-size 10 --local-epochs 1 \\
      --learning-rate 0.01 --rounds-per-chunk 10

``fedjax.algorithms.fed_avg.federated_averaging`` with client SGD and
server SGD at learning rate 1, on an ``InMemoryFederatedData`` of the
clients' .npy row slices and a haiku model with fedround's layers. It runs
on FedJAX's default ``for_each_client`` backend: a Python loop over the
cohort and over each client's batches, one jitted step per batch. Batches
come from ``ClientDataset.shuffle_repeat_batch``, the batching FedJAX's
FedAvg takes, which always yields full batches of B: with
``num_epochs=E`` it yields ceil(n_i E / B) batches, the last one filled
with examples of the next shuffle (fedround: E ceil(n_i / B) steps, the
last of each epoch partial); with ``num_steps=K`` (``num_epochs=None``) K
batches drawn without replacement, reshuffling after each pass (fedround:
uniformly with replacement). Compile time is the warm-up round's time less
the median round's. Prints one JSON line.

FedJAX 0.0.17 calls ``jax.tree_map``, which jax has removed; the shim
below restores it (and the other removed tree aliases) from
``jax.tree_util`` before fedjax is imported.
"""
from __future__ import annotations

import json
import statistics
import time

import jax

for _alias in ('tree_map', 'tree_leaves', 'tree_flatten', 'tree_unflatten',
               'tree_structure', 'tree_reduce'):
  if not hasattr(jax, _alias):
    setattr(jax, _alias, getattr(jax.tree_util, _alias))
if not hasattr(jax.tree_util, 'tree_multimap'):
  jax.tree_util.tree_multimap = jax.tree_util.tree_map

import fedjax  # noqa: E402  (after the shim)
import haiku as hk  # noqa: E402
import numpy as np  # noqa: E402
from fedjax.algorithms import fed_avg  # noqa: E402

from common import argument_parser, load_federation  # noqa: E402


def forward(model: str, num_classes: int):
  """fedround's ``logistic`` or ``cnn`` (16, 32 channels, dense 64)."""
  def logits(batch):
    x = batch['x']
    if model == 'cnn':
      for width in (16, 32):
        x = jax.nn.relu(hk.Conv2D(width, kernel_shape=3, padding='SAME')(x))
        x = hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                        padding='VALID')
      x = jax.nn.relu(hk.Linear(64)(hk.Flatten()(x)))
    return hk.Linear(num_classes)(hk.Flatten()(x))
  return hk.transform(logits)


def main() -> None:
  args = argument_parser(__doc__.split('\n')[0]).parse_args()
  num_classes, x, y, start, n = load_federation(args.data)
  client_id = lambda i: b'%d' % i
  federation = fedjax.InMemoryFederatedData({
      client_id(i): {'x': x[s:s + k], 'y': y[s:s + k]}
      for i, (s, k) in enumerate(zip(start, n))})
  model = fedjax.create_model_from_haiku(
      forward(args.model, num_classes), {'x': x[:1], 'y': y[:1]},
      lambda batch, logits: fedjax.metrics.unreduced_cross_entropy_loss(
          batch['y'], logits))
  if args.local_steps:
    batching = fedjax.ShuffleRepeatBatchHParams(
        args.batch_size, num_epochs=None, num_steps=args.local_steps)
    client_steps = lambda k: args.local_steps
  else:
    batching = fedjax.ShuffleRepeatBatchHParams(
        args.batch_size, num_epochs=args.local_epochs)
    client_steps = lambda k: -(-k * args.local_epochs // args.batch_size)
  algorithm = fed_avg.federated_averaging(
      fedjax.model_grad(model), fedjax.optimizers.sgd(args.learning_rate),
      fedjax.optimizers.sgd(1.0), batching)
  state = algorithm.init(model.init(jax.random.PRNGKey(0)))
  cohorts = np.load(args.cohorts)
  client_keys = jax.random.split(jax.random.PRNGKey(1), cohorts.shape[1])

  def fedavg_round(state, ids):
    clients = [(cid, dataset, key) for (cid, dataset), key in zip(
        federation.get_clients([client_id(i) for i in ids]), client_keys)]
    state, _ = algorithm.apply(state, clients)
    return jax.block_until_ready(state)

  begin = time.perf_counter()
  state = fedavg_round(state, cohorts[0])  # warm-up: compiles every step
  warm_up_s = time.perf_counter() - begin
  chunk_ms = []
  for chunk in np.split(cohorts, len(cohorts) // args.rounds_per_chunk):
    begin = time.perf_counter()
    for ids in chunk:
      state = fedavg_round(state, ids)
    chunk_ms.append(1000 * (time.perf_counter() - begin) / len(chunk))
  steps = [sum(client_steps(int(n[i])) for i in ids) for ids in cohorts]
  ms_per_round = statistics.median(chunk_ms)
  print(json.dumps(dict(
      program='fedjax', jax=jax.__version__, ms_per_round=ms_per_round,
      compile_s=max(0.0, warm_up_s - ms_per_round / 1000),
      rounds=len(cohorts), steps=statistics.mean(steps),
      lane_steps=statistics.mean(steps),
      examples=args.batch_size * statistics.mean(steps))))


if __name__ == '__main__':
  main()
