"""Server optimizers on the pseudo-gradient and learning-rate schedules,
checked against trajectories written out by hand (ALGORITHMS.md section 5)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedavg_synthetic
from conftest import assert_trees_close
from fedround import train
from fedround.optimizers import OPTIMIZERS, build_optimizer, build_schedule
from fedround.registry import ConfigError
from fedround.server import optimizer_step


def server_step(optimizer, params, opt_state, aggregate):
  """The round's server stage with ``optimizer`` (an optax transformation)."""
  return optimizer_step(lambda learning_rate: optimizer).update(
      aggregate, opt_state, params, None)[:2]

FIELD = 'config.server.optimizer'
START = np.array([1.0, -2.0])
TARGET = np.array([0.5, 1.0])  # every cohort moves the model to TARGET
LR = 0.1
IN_UNIT_INTERVAL = r'must be a number in \[0, 1\)'


def server_trajectory(optimizer, rounds=2):
  """Params after each round of f(x) = |x - TARGET|^2 / 2 where the
  aggregate is TARGET - x, so the pseudo-gradient is x - TARGET."""
  params = {'w': jnp.asarray(START, jnp.float32)}
  opt_state = optimizer.init(params)
  trajectory = []
  for _ in range(rounds):
    aggregate = {'w': jnp.asarray(TARGET, jnp.float32) - params['w']}
    params, opt_state = server_step(optimizer, params, opt_state, aggregate)
    trajectory.append(np.asarray(params['w']))
  return np.stack(trajectory)


def built(spec, learning_rate=LR):
  return build_optimizer(spec, FIELD)(jnp.float32(learning_rate))


def momentum_by_hand(momentum, nesterov, rounds=2):
  x, buffer, trajectory = START.copy(), np.zeros(2), []
  for _ in range(rounds):
    g = x - TARGET
    buffer = momentum * buffer + g
    x = x - LR * (g + momentum * buffer if nesterov else buffer)
    trajectory.append(x)
  return np.stack(trajectory)


def adaptive_by_hand(rule, b1=0.9, b2=0.99, eps=1e-3, bias_correction=False,
                     rounds=2):
  """Reddi et al., Algorithm 2, with m and v starting at 0."""
  x, m, v, trajectory = START.copy(), np.zeros(2), np.zeros(2), []
  for t in range(1, rounds + 1):
    g = x - TARGET
    m = b1 * m + (1 - b1) * g
    if rule == 'adam':
      v = b2 * v + (1 - b2) * g**2
    elif rule == 'yogi':
      v = v - (1 - b2) * g**2 * np.sign(v - g**2)
    else:
      v = v + g**2
    m_hat, v_hat = m, v
    if bias_correction:
      m_hat = m / (1 - b1**t)
      v_hat = v if rule == 'adagrad' else v / (1 - b2**t)
    x = x - LR * m_hat / (np.sqrt(v_hat) + eps)
    trajectory.append(x)
  return np.stack(trajectory)


@pytest.mark.parametrize('spec, expected', [
    ('fedavgm', momentum_by_hand(0.9, nesterov=False)),
    ('fedavgm(momentum=0.5, nesterov=True)', momentum_by_hand(0.5, True)),
    ('diloco', momentum_by_hand(0.9, nesterov=True)),
    ('fedadam', adaptive_by_hand('adam')),
    ('fedadam(b1=0.5, b2=0.9, eps=0.01)',
     adaptive_by_hand('adam', b1=0.5, b2=0.9, eps=0.01)),
    ('fedyogi', adaptive_by_hand('yogi')),
    ('fedadagrad', adaptive_by_hand('adagrad')),
    ('fedadagrad(b1=0.0)', adaptive_by_hand('adagrad', b1=0.0)),
    ('fedadagrad(bias_correction=True)',
     adaptive_by_hand('adagrad', bias_correction=True)),
])
def test_server_optimizer_matches_hand_trajectory(spec, expected):
  np.testing.assert_allclose(server_trajectory(built(spec)), expected,
                             rtol=1e-5, atol=1e-6)


def test_fedadam_first_round_by_hand():
  # g = (0.5, -3), m = 0.1 g, v = 0.01 g^2: the step is lr g / (|g| + 0.01).
  g = START - TARGET
  expected = START - LR * g / (np.abs(g) + 0.01)
  np.testing.assert_allclose(server_trajectory(built('fedadam'), 1)[0],
                             expected, rtol=1e-6)


@pytest.mark.parametrize('spec, rule, hparams, reference', [
    ('fedadam(bias_correction=True)', 'adam', {},
     optax.adam(LR, 0.9, 0.99, 1e-3)),
    ('fedadam(b1=0.8, b2=0.9, eps=1e-4, bias_correction=True)', 'adam',
     dict(b1=0.8, b2=0.9, eps=1e-4), optax.adam(LR, 0.8, 0.9, 1e-4)),
    # optax.yogi itself, but with m and v starting at 0 rather than 1e-6.
    ('fedyogi(bias_correction=True)', 'yogi', {},
     optax.chain(optax.scale_by_yogi(0.9, 0.99, 1e-3,
                                     initial_accumulator_value=0.0),
                 optax.scale_by_learning_rate(LR))),
])
def test_bias_corrected_equals_optax(spec, rule, hparams, reference):
  ours = server_trajectory(built(spec), rounds=4)
  np.testing.assert_allclose(ours, server_trajectory(reference, rounds=4),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      ours, adaptive_by_hand(rule, bias_correction=True, rounds=4, **hparams),
      rtol=1e-5, atol=1e-6)


def test_fedavgm_without_momentum_at_learning_rate_one_is_fedavg():
  optimizer = built('fedavgm(momentum=0.0)', learning_rate=1.0)
  params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([[3.0]])}
  opt_state = optimizer.init(params)
  for aggregate in ({'a': jnp.array([0.5, -1.0]), 'b': jnp.array([[2.0]])},
                    {'a': jnp.array([-0.25, 4.0]), 'b': jnp.array([[-1.0]])}):
    expected = jax.tree.map(jnp.add, params, aggregate)
    params, opt_state = server_step(optimizer, params, opt_state, aggregate)
    assert_trees_close(params, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('spec', ['fedavgm', 'diloco', 'fedadam', 'fedyogi',
                                  'fedadagrad(bias_correction=True)'])
def test_learning_rate_may_be_traced(spec):
  factory = build_optimizer(spec, FIELD)

  @jax.jit
  def two_rounds(learning_rate):
    optimizer = factory(learning_rate)
    params = {'w': jnp.asarray(START, jnp.float32)}
    opt_state = optimizer.init(params)
    for _ in range(2):
      aggregate = {'w': jnp.asarray(TARGET, jnp.float32) - params['w']}
      params, opt_state = server_step(optimizer, params, opt_state, aggregate)
    return params['w']

  replicas = jax.vmap(two_rounds)(jnp.array([LR, 0.5], jnp.float32))
  np.testing.assert_allclose(replicas[0], server_trajectory(built(spec))[-1],
                             rtol=1e-6)
  np.testing.assert_allclose(
      replicas[1], server_trajectory(built(spec, learning_rate=0.5))[-1],
      rtol=1e-6)


@pytest.mark.parametrize('spec, message', [
    ('fedavgm(momentum=1.0)', f'momentum {IN_UNIT_INTERVAL}, got 1.0'),
    ('diloco(momentum=-0.1)', f'momentum {IN_UNIT_INTERVAL}, got -0.1'),
    ('fedadam(b1=1.0)', f'b1 {IN_UNIT_INTERVAL}, got 1.0'),
    ('fedadam(b2=-0.1)', f'b2 {IN_UNIT_INTERVAL}, got -0.1'),
    ('fedyogi(b2=1)', f'b2 {IN_UNIT_INTERVAL}, got 1'),
    ('fedadam(eps=0)', 'eps must be a number > 0, got 0'),
    ('fedadagrad(eps=-1e-3)', 'eps must be a number > 0, got -0.001'),
    ('fedyogi(b1="0.9")', f"b1 {IN_UNIT_INTERVAL}, got '0.9'"),
    ('diloco(nesterov=1)', 'nesterov must be True or False, got 1'),
    ('fedadam(bias_correction="no")',
     "bias_correction must be True or False, got 'no'"),
    ('fedadagrad(b2=0.99)',
     "no parameter 'b2'; valid parameters: b1, eps, bias_correction"),
    ('fedadamm', "unknown optimizer 'fedadamm'; valid optimizers: .*diloco, "
     'fedadagrad, fedadam, fedavgm, fedyogi'),
])
def test_bad_optimizer_spec_fails_at_build_time(spec, message):
  with pytest.raises(ConfigError, match=f'^{FIELD}: .*{message}'):
    build_optimizer(spec, FIELD)


def test_sgd_weight_decay_is_torchs_coupled_l2():
  """torch.optim.SGD(lr=0.5, momentum=0.9, weight_decay=0.1) on a constant
  gradient 0.5 from w = 1: buf = 0.5 + 0.1 * 1 = 0.6, w = 1 - 0.5 * 0.6 =
  0.7; buf = 0.9 * 0.6 + 0.5 + 0.1 * 0.7 = 1.11, w = 0.7 - 0.555 = 0.145.
  Without weight decay it is optax.sgd, state and all."""
  optimizer = build_optimizer('sgd(momentum=0.9, weight_decay=0.1)',
                              FIELD)(0.5)
  params = {'w': jnp.ones(1)}
  state = optimizer.init(params)
  path = []
  for _ in range(2):
    updates, state = optimizer.update({'w': jnp.full(1, 0.5)}, state, params)
    params = optax.apply_updates(params, updates)
    path.append(float(params['w'][0]))
  np.testing.assert_allclose(path, [0.7, 0.145], rtol=1e-6)
  plain = build_optimizer('sgd(momentum=0.9)', FIELD)(0.5)
  reference = optax.sgd(0.5, momentum=0.9)
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(
      reference.init(params))
  with pytest.raises(ConfigError,
                     match='weight_decay must be a number >= 0, got -1'):
    build_optimizer('sgd(weight_decay=-1)', FIELD)


def test_cosine_local_schedule_steps_once_an_epoch():
  """FRL's CosineAnnealingLR(T_max=E) stepped each local epoch: 5 epochs
  run at 1, 0.905, 0.655, 0.345, 0.095 of the round's rate. A client on a
  loss with gradient 1 moves by -lr x the sum of its steps' multipliers:
  2 epochs of 2 batches, 1 + 1 + 0.5 + 0.5; 4 local steps, 1 + 0.854 + 0.5
  + 0.146; that sum is the round's step count for the mean direction."""
  from fedround.client import Broadcast, ClientInput, make_client
  from fedround.data import ClientData
  from fedround.optimizers import LOCAL_SCHEDULES
  cosine = LOCAL_SCHEDULES.build('cosine', 'config.client.local_schedule')
  np.testing.assert_allclose(cosine(jnp.arange(5), 5),
                             [1, 0.9045, 0.6545, 0.3455, 0.0955], atol=1e-4)
  apply_fn = lambda params, x: x * params['w']
  slope = lambda outputs, labels, valid: jnp.sum(
      outputs[:, 0] * valid) / jnp.sum(valid)
  data = ClientData(jnp.ones((4, 1)), jnp.zeros(4, jnp.int32),
                    jnp.array([0]), jnp.array([4]), 4)
  broadcast = Broadcast({'w': jnp.zeros(1)}, jnp.float32(0.1), (), data)
  one = ClientInput(jnp.zeros(1, jnp.int32), jax.random.PRNGKey(0)[None], (),
                    jnp.ones(1, bool))
  for schedule, expected in ((dict(local_epochs=2), 3.0),
                             (dict(local_steps=4), 2.5)):
    client = make_client(apply_fn, optax.sgd, batch_size=2, max_examples=4,
                         objective=slope, local_schedule=cosine, **schedule)
    result = jax.jit(client.train)(broadcast, one)[0]
    np.testing.assert_allclose(result.delta['w'][0], [-0.1 * expected],
                               rtol=1e-6)
    # What the round divides by to get the mean local direction (FedAvg-M,
    # SCAFFOLD-M): the steps at their multipliers; 4 under constant.
    np.testing.assert_allclose(result.scaled_steps[0], expected, rtol=1e-6)
    plain = make_client(apply_fn, optax.sgd, batch_size=2, max_examples=4,
                        objective=slope, **schedule)
    assert float(jax.jit(plain.train)(broadcast, one)[0].scaled_steps[0]) == 4.0


def test_server_optimizers_are_registered():
  for name in ('fedavgm', 'diloco', 'fedadam', 'fedyogi', 'fedadagrad'):
    assert name in OPTIMIZERS


@pytest.mark.parametrize('spec, expected', [
    ('constant', {0: 1.0, 7: 1.0}),
    # 0.2 + 0.8 (1 + cos(pi r / 4)) / 2 until round 4, then 0.2
    ('cosine(rounds=4, final=0.2)',
     {0: 1.0, 1: 0.2 + 0.4 * (1 + np.sqrt(0.5)), 2: 0.6, 4: 0.2, 9: 0.2}),
    ('cosine(rounds=10)', {0: 1.0, 5: 0.5, 10: 0.0, 11: 0.0}),
    # r / 2 until round 2, then (1 + cos(pi (r - 2) / 4)) / 2 until round 6
    ('warmup_cosine(warmup=2, rounds=6)',
     {0: 0.0, 1: 0.5, 2: 1.0, 4: 0.5, 6: 0.0, 9: 0.0}),
    ('warmup_cosine(warmup=0, rounds=2, final=0.1)', {0: 1.0, 1: 0.55, 3: 0.1}),
    ('step(every=3, factor=0.5)', {0: 1.0, 2: 1.0, 3: 0.5, 7: 0.25}),
    ('step(every=2)', {1: 1.0, 2: 0.1, 5: 0.01}),
    ('exponential(rate=0.9)', {0: 1.0, 1: 0.9, 3: 0.729}),
])
def test_schedule_values(spec, expected):
  schedule = build_schedule(spec, 'config.server.schedule')
  jitted = jax.jit(schedule)
  for round_, multiplier in expected.items():
    for value in (schedule(jnp.int32(round_)), jitted(jnp.int32(round_))):
      assert value.dtype == jnp.float32 and value.shape == ()
      np.testing.assert_allclose(value, multiplier, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('spec, message', [
    ('cosine(rounds=0)', 'rounds must be an integer >= 1, got 0'),
    ('cosine(rounds=2.5)', 'rounds must be an integer >= 1, got 2.5'),
    ('cosine(rounds=10, final=-0.1)',
     r'final \(the last multiplier\) must be a number >= 0, got -0.1'),
    ('warmup_cosine(warmup=-1, rounds=5)',
     'warmup must be an integer >= 0, got -1'),
    ('warmup_cosine(warmup=5, rounds=5)',
     r'rounds \(warmup included\) must be an integer >= 6, got 5'),
    ('step(every=0)', 'every must be an integer >= 1, got 0'),
    ('step(every=2, factor=0)', 'factor must be a number > 0, got 0'),
    ('exponential(rate=-1)', 'rate must be a number > 0, got -1'),
    ('exponential', "cannot build schedule 'exponential'.*rate"),
    ('linear', "unknown schedule 'linear'; valid schedules: constant, cosine, "
     'exponential, step, warmup_cosine'),
])
def test_bad_schedule_spec_fails_at_build_time(spec, message):
  field = 'config.server.schedule'
  with pytest.raises(ConfigError, match=f'^{field}: .*{message}'):
    build_schedule(spec, field)


def test_schedules_and_server_optimizer_drive_a_run(tmp_path, traces):
  """config.{client,server}.schedule scale each round's learning rates
  (logged per round) under a FedAdam server."""
  config = fedavg_synthetic.get_config()
  config.rounds = 4
  config.eval_every = config.checkpoint_every = 4
  config.progress = False
  config.client.schedule = 'step(every=2, factor=0.5)'
  config.server.optimizer = 'fedadam'
  config.server.learning_rate = 0.03
  config.server.schedule = 'exponential(rate=0.5)'
  result = train.run(config, str(tmp_path))
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  client_lr = config.client.learning_rate
  np.testing.assert_allclose([r['client_learning_rate'] for r in rows],
                             [client_lr, client_lr, client_lr / 2,
                              client_lr / 2], rtol=1e-6)
  np.testing.assert_allclose([r['server_learning_rate'] for r in rows],
                             [0.03, 0.015, 0.0075, 0.00375], rtol=1e-6)
  assert all(r['update_norm'] > 0 for r in rows)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(
      result.state.params))
  assert traces[0] == 1


def test_bad_schedule_in_config_fails_before_training(tmp_path):
  config = fedavg_synthetic.get_config()
  config.server.schedule = 'cosine(rounds=0)'
  with pytest.raises(ConfigError, match='config.server.schedule'):
    train.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)
