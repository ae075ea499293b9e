"""optax optimizers by name, for clients and for the server.

A spec such as ``'sgd(momentum=0.9)'`` picks the optimizer and its extra
arguments; the learning rate is a separate numeric config field.
"""
from __future__ import annotations

import optax

from fedround.registry import Registry

OPTIMIZERS = Registry('optimizer')
for _name in ('sgd', 'adam', 'adamw', 'adagrad', 'yogi', 'rmsprop', 'lamb',
              'lion', 'nadam'):
  OPTIMIZERS.register(_name)(getattr(optax, _name))


def build_optimizer(spec: str, learning_rate: float, field: str):
  if not learning_rate > 0:
    raise ValueError(f'{field}: learning rate must be > 0, got {learning_rate}')
  return OPTIMIZERS.build(spec, field, learning_rate=learning_rate)
