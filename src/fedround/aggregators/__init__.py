"""Aggregation rules by name; a config composes them with ``|``.

``config.aggregator = 'clip(max_norm=10) | trimmed_mean(f=2)'`` chains
pre-aggregators and one final rule (see ``base.chain``).
"""
from __future__ import annotations

from fedround.aggregators.base import Aggregator, PreAggregator, chain, stateless
from fedround.aggregators import weighted
from fedround.registry import ConfigError, Registry, parse_spec

AGGREGATORS = Registry('aggregator')
AGGREGATORS.register('weighted_mean')(weighted.weighted_mean)
AGGREGATORS.register('mean')(weighted.mean)


def build_aggregator(spec: str, field: str = 'config.aggregator', /, *,
                     num_clients: int | None = None) -> Aggregator:
  """Builds ``'pre1(...) | pre2(...) | rule(...)'`` into one Aggregator.

  ``num_clients`` (the cohort size) lets each part check its parameters
  against the number of clients that reach it.
  """
  if not isinstance(spec, str):
    raise ConfigError(f'{field}: expected a string such as "weighted_mean" '
                      f'or "clip(max_norm=10) | mean", got {spec!r}')
  parts = [s.strip() for s in spec.split('|')]
  built = []
  for i, part in enumerate(parts):
    name, kwargs = parse_spec(part, field)
    context = {} if num_clients is None else {'num_clients': num_clients}
    built.append(AGGREGATORS.call(name, kwargs, field, **context))
    is_last = i == len(parts) - 1
    if is_last and not isinstance(built[-1], Aggregator):
      raise ConfigError(f'{field}: the last part {part!r} must be an '
                        'aggregation rule, not a pre-aggregator')
    if not is_last and not isinstance(built[-1], PreAggregator):
      raise ConfigError(f'{field}: {part!r} is an aggregation rule; only '
                        'pre-aggregators may come before the last "|"')
  return chain(*built)


__all__ = ['AGGREGATORS', 'Aggregator', 'PreAggregator', 'build_aggregator',
           'chain', 'stateless']
