"""Spec strings and registries: what configs are made of."""
import pytest

from fedround.aggregators import build_aggregator
from fedround.config import parse_variant
from fedround.registry import ConfigError, Registry, parse_spec


def test_parse_spec():
  assert parse_spec('krum', 'f') == ('krum', {})
  assert parse_spec(' mlp(hidden=(64, 32), act="relu") ', 'f') == (
      'mlp', {'hidden': (64, 32), 'act': 'relu'})
  for bad in ('', 'mlp(64)', 'mlp(hidden=x)', 'a.b', 'mlp(('):
    with pytest.raises(ConfigError, match='config.model'):
      parse_spec(bad, 'config.model')


def test_registry_names_valid_choices():
  registry = Registry('widget')
  registry.register('round')(lambda radius=1.0: ('round', radius))
  registry.register('square')(lambda side, colour='red': ('square', side))
  assert registry.build('round(radius=2.0)', 'cfg.w') == ('round', 2.0)
  with pytest.raises(ConfigError, match="unknown widget 'oval'.*round, square"):
    registry.build('oval', 'cfg.w')
  with pytest.raises(ConfigError, match="no parameter 'size'.*side, colour"):
    registry.build('square(size=1)', 'cfg.w')
  with pytest.raises(ValueError, match='registered twice'):
    registry.register('round')(lambda: None)


def test_aggregator_chain_spec_requires_a_final_rule():
  with pytest.raises(ConfigError, match='config.aggregator: unknown aggregator'):
    build_aggregator('krumm')
  with pytest.raises(ConfigError, match='only pre-aggregators'):
    build_aggregator('mean | weighted_mean')


def test_parse_variant():
  variant = parse_variant('alpha=1,iid=True', alpha=0.5, iid=False)
  assert variant.alpha == 1.0 and variant.iid is True
  with pytest.raises(ConfigError, match='alpah'):
    parse_variant('alpah=1', alpha=0.5)
  with pytest.raises(ConfigError, match='alpha must be of type float'):
    parse_variant('alpha=big', alpha=0.5)
