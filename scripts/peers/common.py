"""What both peer scripts share: their arguments and the federation they
read (numpy only; neither imports fedround)."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


def argument_parser(description: str) -> argparse.ArgumentParser:
  """The arguments scripts/bench_peers.py passes every peer."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--data', required=True)
  parser.add_argument('--cohorts', required=True)
  parser.add_argument('--model', choices=('logistic', 'cnn'), required=True)
  parser.add_argument('--batch-size', type=int, required=True)
  parser.add_argument('--local-epochs', type=int, default=0)
  parser.add_argument('--local-steps', type=int, default=0)
  parser.add_argument('--learning-rate', type=float, required=True)
  parser.add_argument('--rounds-per-chunk', type=int, required=True)
  return parser


def load_federation(path: str):
  """(num_classes, x, y, start, n) of the training split fedround wrote
  with ``fedround.data.arrays.save``."""
  with open(os.path.join(path, 'federation.json')) as f:
    num_classes = json.load(f)['num_classes']
  load = lambda name: np.load(os.path.join(path, f'{name}.npy'))
  return (num_classes, *(load(f'train.{name}')
                         for name in ('x', 'y', 'start', 'n')))
