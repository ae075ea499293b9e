"""optax optimizers by name, for clients and for the server.

A spec such as ``'sgd(momentum=0.9)'`` picks the optimizer and its extra
arguments; the learning rate is a separate numeric config field, passed in
as an array each round (``ServerState.hparams``) so it can vary by replica.
"""
from __future__ import annotations

from typing import Callable

import optax

from fedround.registry import Registry, parse_spec

OPTIMIZERS = Registry('optimizer')
for _name in ('sgd', 'adam', 'adamw', 'adagrad', 'yogi', 'rmsprop', 'lamb',
              'lion', 'nadam'):
  OPTIMIZERS.register(_name)(getattr(optax, _name))


def build_optimizer(spec: str, field: str
                    ) -> Callable[..., optax.GradientTransformation]:
  """``spec`` -> factory learning_rate -> optax transformation; a bad spec
  fails here, not inside the traced round."""
  name, kwargs = parse_spec(spec, field)
  OPTIMIZERS.call(name, kwargs, field, learning_rate=1.0)
  return lambda learning_rate: OPTIMIZERS.call(name, kwargs, field,
                                               learning_rate=learning_rate)

