"""Byzantine attacks: hand-computed vectors, the optimal search, and the
attacks inside the jitted round (who attacks, NaN safety, label flipping)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedavg_digits
from conftest import assert_trees_close
from fedround import attacks, train
from fedround.aggregators import build_aggregator
from fedround.client import make_client
from fedround.data import ClientData, FederatedData, uniform
from fedround.messages import identity
from fedround.models import MODELS
from fedround.registry import ConfigError
from fedround.rounds import make_round
from fedround.server import init_server_state, optimizer_step

# Three honest clients [1, 2], [3, 4], [5, 6] and two Byzantine slots.
UPDATES = {'w': jnp.array([[1., 2.], [3., 4.], [5., 6.], [7., 7.], [9., 9.]])}
BYZANTINE = jnp.array([False, False, False, True, True])
HONEST = ~BYZANTINE
MEAN = np.array([3., 4.])


def _attack(name, aggregate=None, **kwargs):
  attack = attacks.ATTACKS.call(name, kwargs, 'attack')
  out = attack.forge(UPDATES, byzantine=BYZANTINE, honest=HONEST,
                     key=jax.random.PRNGKey(0), aggregate=aggregate)
  np.testing.assert_array_equal(out['w'][:3], UPDATES['w'][:3])
  return np.asarray(out['w'][3:])


def test_hand_computed_attack_vectors():
  np.testing.assert_allclose(_attack('sign_flip'), [-MEAN, -MEAN])
  np.testing.assert_allclose(_attack('ipm'), [-2 * MEAN] * 2)  # tau = 2
  np.testing.assert_allclose(_attack('ipm', tau=0.1), [-0.1 * MEAN] * 2,
                             rtol=1e-6)
  # std (ddof=1) of [1, 3, 5] and of [2, 4, 6] is 2: mean + 1.5 * 2.
  np.testing.assert_allclose(_attack('alie'), [MEAN + 3] * 2, rtol=1e-6)
  np.testing.assert_allclose(_attack('mimic', target=1), [[3., 4.]] * 2)
  np.testing.assert_allclose(_attack('mimic', target=9), [[5., 6.]] * 2)
  assert np.isposinf(_attack('inf')).all()
  assert np.isnan(_attack('nan')).all()
  np.testing.assert_array_equal(_attack('none'), UPDATES['w'][3:])
  np.testing.assert_array_equal(_attack('label_flip'), UPDATES['w'][3:])
  # Two clients of three rows; row 3 is padding between them, left alone.
  data = ClientData(jnp.zeros((7, 1)), jnp.array([0, 1, 4, 2, 0, 1, 4]),
                    jnp.array([0, 4]), jnp.array([3, 3]), 3)
  poisoned = attacks.poisoning.label_flip().poison(
      data, jnp.array([True, False]), 5)
  np.testing.assert_array_equal(poisoned.y, [4, 3, 0, 2, 0, 1, 4])
  assert attacks.omniscient.alie().poison(data, jnp.array([True, False]), 5) is data


def test_boosting_scales_the_byzantine_clients_own_updates():
  """The Byzantine rows 3 and 4 ([7, 7] and [9, 9]) times the boost."""
  np.testing.assert_allclose(_attack('boosting'),
                             10 * np.asarray(UPDATES['w'][3:]))
  np.testing.assert_allclose(_attack('boosting', boost=-0.5),
                             -0.5 * np.asarray(UPDATES['w'][3:]))
  with pytest.raises(ConfigError, match='boost must be a number'):
    attacks.ATTACKS.build("boosting(boost='x')", 'config.attack.name')


def test_gaussian_draws_per_client():
  attack = attacks.noise.gaussian(mu=5.0, sigma=2.0)
  big = {'w': jnp.zeros((4, 20000))}
  out = attack.forge(big, byzantine=jnp.array([True, True, False, False]),
                     honest=jnp.array([False, False, True, True]),
                     key=jax.random.PRNGKey(1))['w']
  assert np.abs(np.mean(out[:2]) - 5.0) < 0.05
  assert np.abs(np.std(out[:2]) - 2.0) < 0.05
  assert not np.allclose(out[0], out[1])
  np.testing.assert_array_equal(out[2:], 0)


@pytest.mark.parametrize('name,base', [('optimal_ipm', 'ipm'),
                                       ('optimal_alie', 'alie')])
@pytest.mark.parametrize('rule', ['mean', 'weighted_mean'])
def test_optimal_attack_beats_every_grid_tau(name, base, rule):
  aggregator = build_aggregator(rule)
  weights = jnp.ones(5)

  def aggregate(stack):
    return aggregator.update(stack, (), weights=weights, key=None)[0]

  def damage(vectors):
    stack = {'w': UPDATES['w'].at[3:].set(jnp.asarray(vectors))}
    return float(np.sum((np.asarray(aggregate(stack)['w']) - MEAN) ** 2))

  best = damage(_attack(name, aggregate=aggregate))
  for tau in attacks.omniscient._TAU_GRID:
    assert best >= damage(_attack(base, tau=tau)) - 1e-4


def test_byzantine_mask_counts_and_seeds():
  key = jax.random.PRNGKey(0)
  mask = attacks.byzantine_mask(key, 50, 0.2)
  assert int(mask.sum()) == 10
  assert int(attacks.byzantine_mask(key, 30, 0.1).sum()) == 3
  assert int(attacks.byzantine_mask(key, 9, 0.1).sum()) == 0   # floor
  other = attacks.byzantine_mask(jax.random.PRNGKey(1), 50, 0.2)
  assert not np.array_equal(mask, other)
  explicit = attacks.byzantine_mask(key, 6, 0.0, ids=(1, 4))
  np.testing.assert_array_equal(explicit, [0, 1, 0, 0, 1, 0])


def _one_round(data, *, attack='none', ids=(), fraction=0.0,
               aggregator='weighted_mean'):
  model = MODELS.build('logistic', 'model', num_classes=data.num_classes)
  agg = build_aggregator(aggregator)
  client = make_client(model.apply, optax.sgd, batch_size=8,
                       max_examples=data.max_examples, local_epochs=1)
  round_ = make_round(client=client, message=identity(),
                      aggregator=agg,
                      server_update=optimizer_step(optax.sgd),
                      participation=uniform(data.num_clients, data.num_clients),
                      attack=attacks.ATTACKS.build(attack, 'attack'),
                      byzantine_fraction=fraction, byzantine_ids=ids)
  params = model.init(jax.random.PRNGKey(0), data.train.x[:1])
  state = init_server_state(params, server_update=optimizer_step(optax.sgd),
                            aggregator=agg,
                            key=jax.random.PRNGKey(0),
                            client_learning_rate=0.3, server_learning_rate=1.0)
  state, _, metrics = jax.jit(round_.fn)(state, (), data)
  return state, metrics


def test_a_cohort_at_least_half_byzantine_is_redrawn():
  """FRL's code redraws a cohort while half or more of it is malicious:
  with clients 0-3 of 8 Byzantine and cohorts of 4, most draws hold 2 or
  more of them; every kept cohort holds at most 1, a draw that held at
  most 1 is kept as it was, and the kept cohorts still vary. With
  redraw_share = 0 the cohorts are the plain draws."""
  agg = build_aggregator('mean')
  model = MODELS.build('logistic', 'model', num_classes=3)
  client = make_client(model.apply, optax.sgd, batch_size=2,
                       max_examples=2, local_steps=1)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  state = init_server_state(params, server_update=optimizer_step(optax.sgd),
                            aggregator=agg, key=jax.random.PRNGKey(0),
                            client_learning_rate=0.1,
                            server_learning_rate=1.0)
  byzantine = np.arange(8) < 4
  cohorts = {}
  for share in (0.0, 0.5):
    round_ = make_round(client=client, message=identity(),
                        aggregator=agg,
                        server_update=optimizer_step(optax.sgd),
                        participation=uniform(8, 4), byzantine_ids=(0, 1, 2, 3),
                        redraw_share=share)
    cohort = jax.jit(round_.cohort)
    cohorts[share] = [np.asarray(cohort(state.replace(round=jnp.int32(r)))[0])
                      for r in range(40)]
  plain = [int(byzantine[ids].sum()) for ids in cohorts[0.0]]
  kept = [int(byzantine[ids].sum()) for ids in cohorts[0.5]]
  assert max(kept) <= 1 and max(plain) >= 2, (plain, kept)
  for before, after, count in zip(cohorts[0.0], cohorts[0.5], plain):
    if count <= 1:  # a cohort that needed no redraw is the plain draw
      np.testing.assert_array_equal(before, after)
  assert len({tuple(sorted(ids)) for ids in cohorts[0.5]}) > 5


def test_nan_and_inf_attacks_are_excluded_and_counted(tiny_federation):
  clean, _ = _one_round(tiny_federation)
  for name in ('nan', 'inf'):
    state, metrics = _one_round(tiny_federation, attack=name, ids=(1, 3))
    assert int(metrics['byzantine']) == 2
    assert int(metrics['nonfinite_excluded']) == 2
    for leaf in jax.tree.leaves(state.params):
      assert np.isfinite(np.asarray(leaf)).all()
    assert not np.allclose(state.params['params']['Dense_0']['kernel'],
                           clean.params['params']['Dense_0']['kernel'])


def test_honest_nonfinite_updates_stay_excluded_under_attack(tiny_federation):
  """A NaN honest update must be counted, not zeroed into a usable one."""
  x = np.asarray(tiny_federation.train.x).copy()
  x[0, 0] = np.nan  # client 0's first example
  data = tiny_federation.replace(train=tiny_federation.train.replace(x=x))
  state, metrics = _one_round(data, attack='sign_flip', ids=(2,))
  assert int(metrics['nonfinite_excluded']) == 1
  assert int(metrics['byzantine']) == 1
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(np.asarray(leaf)).all()


def test_label_flip_trains_on_flipped_labels(tiny_federation):
  data = tiny_federation
  flipped_y = np.asarray(data.train.y).copy()
  for i in (0, 2):
    rows = slice(data.train.start[i], data.train.start[i] + data.n[i])
    flipped_y[rows] = data.num_classes - 1 - flipped_y[rows]
  flipped = data.replace(train=data.train.replace(y=jnp.asarray(flipped_y)))
  attacked, metrics = _one_round(data, attack='label_flip', ids=(0, 2))
  expected, _ = _one_round(flipped)
  assert int(metrics['byzantine']) == 2
  assert_trees_close(attacked.params, expected.params, atol=1e-6)
  honest, _ = _one_round(data)
  assert not np.allclose(honest.params['params']['Dense_0']['kernel'],
                         attacked.params['params']['Dense_0']['kernel'])


def test_sign_flip_halves_the_uniform_mean(tiny_federation):
  """Client 3 sends -mean(honest) to a uniform mean over 4 clients:
  (3 m - m) / 4 = m / 2, m the mean of clients 0-2's updates."""
  data = tiny_federation
  honest_only = FederatedData.from_clients(
      [data.train.client(i)[0] for i in range(3)],
      [data.train.client(i)[1] for i in range(3)],
      data.test_x, data.test_y, 3)
  start = MODELS.build('logistic', 'model', num_classes=3).init(
      jax.random.PRNGKey(0), data.train.x[:1])
  attacked, _ = _one_round(data, attack='sign_flip', ids=(3,),
                           aggregator='mean')
  honest, _ = _one_round(honest_only, aggregator='mean')
  half = jax.tree.map(lambda p, h: p + (h - p) / 2, start, honest.params)
  assert_trees_close(attacked.params, half, atol=1e-6)


def test_attack_config_errors():
  config = fedavg_digits.get_config()
  for field, value, message in [
      ('name', 'alei', "unknown attack 'alei'"),
      ('fraction', 1.5, 'config.attack.fraction must be a number in [0, 1)'),
      ('ids', (1, 1), 'repeated clients'),
      ('redraw_share', 1.5, 'config.attack.redraw_share must be a number in '
       '[0, 1] (0: never redraw a cohort), got 1.5'),
  ]:
    bad = config.copy_and_resolve_references()
    bad.attack[field] = value
    with pytest.raises(ConfigError, match=message.replace('[', r'\[').replace(
        '(', r'\(').replace(')', r'\)')):
      train.check(bad)
  both = config.copy_and_resolve_references()
  both.attack.fraction, both.attack.ids = 0.1, (1,)
  with pytest.raises(ConfigError, match='either fraction or ids'):
    train.check(both)
  beyond = config.copy_and_resolve_references()
  beyond.attack.ids = (3, 500)
  with pytest.raises(ConfigError, match=r'valid ids: 0\.\.49'):
    train.build(beyond)
  kwargs = config.copy_and_resolve_references()
  kwargs.attack.name = 'alie(sigma=3)'
  with pytest.raises(ConfigError, match='valid parameters: tau'):
    train.check(kwargs)
