"""A federation of Stack Overflow's size on the host: rounds/s and memory.

  python scripts/bench_host.py [--clients 300000] [--rounds 20]
  python scripts/bench_host.py --save DIR   # the stand-in as .npy files
  python scripts/bench_host.py --from DIR   # trained memory-mapped

A synthetic stand-in for Stack Overflow NWP (its size, not its text): N
clients with log-normal example counts (median 20, sigma 1.2), each
example 20 random token ids over 10,004, next-token task, 50 clients a
round, 4 local steps of batch 16 with a small LSTM (K steps, not epochs:
on 2 CPU cores the 10,004-way output layer makes each step about a
second, so this measures the input pipeline, not the paper's workload). The federation stays
in host memory (config.data.placement='host'); each chunk of rounds gets
its cohorts' examples packed and copied ahead by a host thread. Prints
the stored bytes, the host's peak resident memory, the compile time, the
rounds per second of training, how many chunks were prefetched and how
long training waited for its input. With --from, the federation is the
one --save wrote (fedround.data.arrays), read memory-mapped: the process
never holds it, so its peak memory is what training needs.
"""
import argparse
import resource
import tempfile
import time

import numpy as np

from fedround import train
from fedround.config import base_config
from fedround.data import DATASETS, ClientData, FederatedData, arrays

VOCABULARY, LENGTH = 10_004, 20


def stand_in(num_clients: int = 300_000, seed: int = 0) -> FederatedData:
  rng = np.random.default_rng(seed)
  counts = np.maximum(1, rng.lognormal(np.log(20), 1.2, num_clients)
                      ).astype(np.int32)
  total = int(counts.sum())
  tokens = rng.integers(3, VOCABULARY, (total, LENGTH + 1), dtype=np.int32)
  start = (np.cumsum(counts) - counts).astype(np.int32)
  train_data = ClientData(x=tokens[:, :-1], y=tokens[:, 1:], start=start,
                          n=counts, max_examples=int(counts.max()))
  test = rng.integers(3, VOCABULARY, (2048, LENGTH + 1), dtype=np.int32)
  return FederatedData(train=train_data, test_x=test[:, :-1],
                       test_y=test[:, 1:], num_classes=VOCABULARY)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clients', type=int, default=300_000)
  parser.add_argument('--rounds', type=int, default=20)
  parser.add_argument('--save', default='', help='write the stand-in here')
  parser.add_argument('--from', dest='source', default='',
                      help='train on the stand-in --save wrote here')
  args = parser.parse_args()
  if args.save:
    arrays.save(stand_in(args.clients), args.save)
    print(f'wrote {args.save}')
    return
  DATASETS.register('stackoverflow_stand_in')(stand_in)
  config = base_config()
  config.data = ({'name': 'npy', 'path': args.source} if args.source else
                 {'name': 'stackoverflow_stand_in',
                  'num_clients': args.clients})
  config.data.placement = 'host'
  config.task, config.model = 'next_token', 'lstm_lm(embed=32, hidden=(64,))'
  config.clients_per_round, config.rounds = 50, args.rounds
  config.client.update(batch_size=16, local_steps=4, local_epochs=0,
                       learning_rate=0.3)
  config.eval_every = config.checkpoint_every = 5
  config.shard, config.progress = False, False
  t0 = time.perf_counter()
  data = train.load_data(config)
  print(f'federation: {data.describe()} (built in '
        f'{time.perf_counter() - t0:.0f} s)')
  summary = train.run(config, tempfile.mkdtemp()).summary
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f'compile {summary["compile_seconds"]:.1f} s; '
        f'{summary["rounds_per_second"]:.2f} rounds/s over {args.rounds} '
        f'rounds; chunks prefetched {summary["chunks_prefetched"]} of '
        f'{args.rounds // 5}, input waits {summary["input_wait_seconds"]} s '
        f'in all; host peak RSS {peak:.2f} GiB')


if __name__ == '__main__':
  main()
