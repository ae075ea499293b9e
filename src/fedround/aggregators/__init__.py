"""Aggregation rules by name; a config composes them with ``|``.

``config.aggregator = 'clip(max_norm=10) | trimmed_mean(f=2)'`` chains
pre-aggregators and one final rule (see ``base.chain``).
"""
from __future__ import annotations

from fedround.aggregators.base import Aggregator, PreAggregator, chain, stateless
from fedround.registry import ConfigError, Registry, import_modules, parse_spec

# Binds fedau, fedce, fedlaw, flag, merging, preaggregators, robust, voting,
# weighted and any new module of this package.
import_modules(__name__, __path__)

AGGREGATORS = Registry('aggregator')
AGGREGATORS.register('weighted_mean')(weighted.weighted_mean)
AGGREGATORS.register('mean')(weighted.mean)
AGGREGATORS.register('fedau')(fedau.fedau)
AGGREGATORS.register('average_participating')(fedau.average_participating)
AGGREGATORS.register('average_all')(fedau.average_all)
AGGREGATORS.register('inverse_probability')(fedau.inverse_probability)
AGGREGATORS.register('fedlaw')(fedlaw.fedlaw)
AGGREGATORS.register('fedce')(fedce.fedce)
AGGREGATORS.register('fisher_merging')(merging.fisher_merging)
AGGREGATORS.register('variance_corrected')(merging.variance_corrected)
AGGREGATORS.register('fedld')(merging.fedld)
AGGREGATORS.register('median')(robust.median)
AGGREGATORS.register('trimmed_mean')(robust.trimmed_mean)
AGGREGATORS.register('meamed')(robust.meamed)
AGGREGATORS.register('krum')(robust.krum)
AGGREGATORS.register('multi_krum')(robust.multi_krum)
AGGREGATORS.register('geometric_median')(robust.geometric_median)
AGGREGATORS.register('centered_clipping')(robust.centered_clipping)
AGGREGATORS.register('bulyan')(robust.bulyan)
AGGREGATORS.register('mda')(robust.mda)
AGGREGATORS.register('monna')(robust.monna)
AGGREGATORS.register('flag')(flag.flag_aggregator)
AGGREGATORS.register('flag_rescaled')(flag.flag_rescaled)
AGGREGATORS.register('frl_vote')(voting.frl_vote)
AGGREGATORS.register('sign_majority')(voting.sign_majority)
AGGREGATORS.register('smallest_norms')(smallest_norms.smallest_norms_mean)
AGGREGATORS.register('clip')(preaggregators.clip)
AGGREGATORS.register('nnm')(preaggregators.nnm)
AGGREGATORS.register('bucketing')(preaggregators.bucketing)
AGGREGATORS.register('arc')(preaggregators.arc)


def build_aggregator(spec: str, field: str = 'config.aggregator', /, *,
                     num_clients: int | None = None,
                     **context) -> Aggregator:
  """Builds ``'pre1(...) | pre2(...) | rule(...)'`` into one Aggregator.

  ``num_clients`` (the cohort size) lets each part check its parameters
  against the number of clients that reach it. ``context`` is what
  fedround knows of the run (population, participation, apply_fn, proxy,
  validation; see aggregators.base); each factory receives what it names.
  """
  if not isinstance(spec, str):
    raise ConfigError(f'{field}: expected a string such as "weighted_mean" '
                      f'or "clip(max_norm=10) | mean", got {spec!r}')
  parts = [s.strip() for s in spec.split('|')]
  built, cohort = [], num_clients
  for i, part in enumerate(parts):
    name, kwargs = parse_spec(part, field)
    sizes = {} if num_clients is None else {'num_clients': num_clients}
    try:
      built.append(AGGREGATORS.call(name, kwargs, field, **sizes, **context))
    except ConfigError as e:
      if num_clients == cohort:
        raise
      raise ConfigError(f'{e} (the pre-aggregators before {part!r} turn '
                        f'a cohort of {cohort} into {num_clients})') from None
    is_last = i == len(parts) - 1
    if is_last and not isinstance(built[-1], Aggregator):
      raise ConfigError(f'{field}: the last part {part!r} must be an '
                        'aggregation rule, not a pre-aggregator')
    if not is_last and not isinstance(built[-1], PreAggregator):
      raise ConfigError(f'{field}: {part!r} is an aggregation rule; only '
                        'pre-aggregators may come before the last "|"')
    if num_clients is not None and not is_last:
      num_clients = built[-1].num_outputs(num_clients)
  return chain(*built)


__all__ = ['AGGREGATORS', 'Aggregator', 'PreAggregator', 'build_aggregator',
           'chain', 'stateless']
