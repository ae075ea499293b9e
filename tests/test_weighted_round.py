"""The weighted family inside the real round: every rule by name through
train.build, traced once, sharded on 8 devices equal to one device, its
diagnostics logged; participation models in the round; bad input refused
before training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedavg_digits
from conftest import assert_trees_close
from fedround import train
from fedround.aggregators import AGGREGATORS
from fedround.models import MODELS
from fedround.registry import ConfigError
from fedround.rounds import make_rounds
from fedround.sweep import set_field

# The weighted family and model merging, from the registry: every rule of
# these modules, at the spec and with the config it needs besides the tiny
# digits federation; VARIANTS adds other settings of a rule.
FAMILY = ('fedau', 'fedlaw', 'fedce', 'merging')
SPECS = {'fedlaw': 'fedlaw(steps=3)'}
NEEDS = {'fedlaw': {'data.proxy_fraction': 0.05},
         'fedce': {'data.validation_fraction': 0.2},
         'fedld': {'client.loss': 'fedld_margin(lam=0.03)'}}
VARIANTS = {'fedau(cutoff=2)': {}}
RULES = {**{SPECS.get(name, name): NEEDS.get(name, {})
            for name in AGGREGATORS.names()
            if AGGREGATORS.get(name, 'aggregator').__module__ in {
                f'fedround.aggregators.{module}' for module in FAMILY}},
         **VARIANTS}


def _tiny(aggregator='weighted_mean', **overrides):
  """Tiny digits; ``overrides`` maps dotted fields to values."""
  config = fedavg_digits.get_config()
  config.data.num_clients = 12
  config.model = 'logistic'
  config.clients_per_round = 6  # a buffer of 8 on 8 devices: 2 padded
  config.client.local_steps = 2
  config.aggregator = aggregator
  for field, value in overrides.items():
    set_field(config, field, value)
  return config


def _rounds(config, rounds=3):
  experiment = train.build(config)
  fn = make_rounds(experiment.round.fn, rounds)
  state, _, metrics = fn(*experiment.init_state(), experiment.data,
                      jnp.int32(rounds))
  return experiment, state, metrics


@pytest.mark.parametrize('rule', list(RULES))
def test_rule_in_the_round_sharded_equals_single_device(rule, traces):
  results = {}
  for shard in (False, True):
    config = _tiny(rule, **RULES[rule])
    config.shard = shard
    experiment, state, metrics = _rounds(config)
    assert traces[-1] == 1
    results[shard] = state.params, metrics
  assert experiment.mesh is not None and experiment.mesh.size == 8
  for leaf in jax.tree.leaves(results[True][0]):
    assert np.isfinite(np.asarray(leaf)).all()
  assert_trees_close(results[True][0], results[False][0], atol=5e-5,
                     rtol=5e-4)
  initial = experiment.init_state()[0].params
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(results[True][0]), jax.tree.leaves(initial)))
  assert moved > 0, f'{rule} never moved the model'


def test_rule_diagnostics_are_metrics():
  _, _, metrics = _rounds(_tiny('fedlaw(steps=3)',
                                **{'data.proxy_fraction': 0.05}))
  gamma = np.asarray(metrics['aggregator.gamma'])
  assert gamma.shape == (3,) and np.all(gamma > 0) and np.any(gamma != 1)
  _, _, metrics = _rounds(_tiny('fedau'))
  assert 'aggregator.mean_weight' in metrics


@pytest.mark.parametrize('model', ['bernoulli', 'markov', 'cyclic(cycle=10)'])
def test_participation_models_in_the_round(model, traces):
  """Varying participant counts in a fixed buffer, one trace, FedAU's
  intervals growing for clients that take part rarely."""
  config = _tiny('fedau', participation=model)
  config.data.num_clients = 40
  config.clients_per_round = 16
  experiment, state, metrics = _rounds(config, rounds=30)
  participants = np.asarray(metrics['participants'])
  assert traces[-1] == 1
  assert participants.max() <= 16 and len(set(participants.tolist())) > 1
  assert float(np.asarray(metrics['aggregator.mean_weight'])[-1]) > 1


def test_a_fresh_participation_state_continues_bit_exactly(tmp_path):
  config = _tiny('fedau', participation='markov')
  config.data.num_clients = 40
  config.clients_per_round = 16
  config.rounds, config.checkpoint_every, config.eval_every = 4, 2, 2
  config.progress = False
  whole = train.run(config, str(tmp_path / 'whole')).state
  config.rounds = 2
  train.run(config, str(tmp_path / 'split'))
  config.rounds = 4
  resumed = train.run(config, str(tmp_path / 'split'))
  assert resumed.summary['resumed_from'] == 2
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


if 'scalar_score' not in MODELS:
  import flax.linen as nn

  class _ScalarScore(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]

  MODELS.register('scalar_score')(lambda num_classes: _ScalarScore())


@pytest.mark.parametrize('overrides, message', [
    ({'aggregator': 'fedlaw'},
     r'fedlaw needs a server proxy set: set config.data.proxy_fraction'),
    ({'aggregator': 'fedau(cutoff=0)'}, r"config.aggregator: .*'fedau'.*"),
    ({'aggregator': 'fisher_merging', 'model': 'scalar_score'},
     r"needs each client's Fisher .* outputs \(2,\)"),
    ({'participation': 'bernoulli', 'clients_per_round': 2},
     r'config.clients_per_round: .*smallest safe value'),
    ({'participation': 'bernouli'},
     r"unknown participation model 'bernouli'.*bernoulli, cyclic, markov"),
    ({'aggregator': 'inverse_probability', 'participation': 'uniform'}, None),
])
def test_bad_input_fails_before_training(overrides, message):
  config = _tiny(**overrides)
  if message is None:
    train.check(config)  # uniform participation knows its p_i = C / N
    return
  with pytest.raises(ConfigError, match=message):
    train.check(config)


def test_data_splits_are_taken_out(tmp_path):
  config = _tiny()
  plain = train.load_data(config)
  config.data.proxy_fraction = 0.05
  config.data.validation_fraction = 0.2
  split = train.load_data(config)
  assert len(split.proxy_y) + len(split.test_y) == len(plain.test_y)
  counts = np.bincount(np.asarray(split.proxy_y), minlength=10)
  assert counts.min() == counts.max()  # class-balanced
  np.testing.assert_array_equal(
      np.asarray(split.n) + np.asarray(split.validation.n),
      np.asarray(plain.n))
  assert np.asarray(split.validation.n).min() >= 1
  with pytest.raises(ConfigError, match=r'proxy_fraction must be a number'):
    config.data.proxy_fraction = 1.5
    train.check(config)
