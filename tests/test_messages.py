"""The message stage: what clients send, its bits, sign majority votes and
attacks on signs."""
import jax
import jax.numpy as jnp
import numpy as np

import fedavg_digits
from fedround import attacks, train
from fedround.aggregators import build_aggregator
from fedround.messages import MESSAGES, float32_bits
from fedround.rounds import make_rounds

PARAMS = {'a': jnp.zeros((3, 4)), 'b': jnp.zeros(5)}


def test_uplink_bits_per_client():
  bits = {kind: MESSAGES.build(kind, 'message').bits(PARAMS)
          for kind in ('identity', 'signs', 'ranks')}
  # ranks: 12 edges at ceil(log2 12) = 4 bits, 5 at 3 bits.
  assert bits == {'identity': 32 * 17, 'signs': 17, 'ranks': 12 * 4 + 5 * 3}
  assert float32_bits(PARAMS) == 32 * 17


def test_encodings():
  deltas = {'a': jnp.array([[0.5, -2., 0.], [1., 3., -1.]])}
  params = {'a': jnp.array([0., 1., 0.2])}
  encode = lambda kind: np.asarray(MESSAGES.build(kind, 'message').encode(
      deltas, params)['a'])
  np.testing.assert_array_equal(encode('identity'), deltas['a'])
  np.testing.assert_array_equal(encode('signs'), [[1, -1, 0], [1, 1, -1]])
  # Final scores [0.5, -1, 0.2] and [1, 4, -0.8], ranked least to most.
  np.testing.assert_array_equal(encode('ranks'), [[2, 0, 1], [1, 2, 0]])
  assert encode('ranks').dtype == np.int32


def test_sign_majority_on_hand_cases():
  rule = build_aggregator('sign_majority')
  messages = {'w': jnp.array([[1., -1., 0.5, 2.], [2., -3., -0.1, -1.],
                              [-1., -1., 0.2, 0.], [-5., 5., -5., -5.]])}

  def vote(weights):
    return np.asarray(rule.update(messages, (), weights=jnp.array(
        weights, jnp.float32), key=jax.random.PRNGKey(0))[0]['w'])

  # Column 3: +1, -1 and an abstaining 0 tie. Example counts do not weigh;
  # the fourth client, absent, does not vote: present, it ties columns 0
  # and 2 and tips column 3.
  np.testing.assert_array_equal(vote([1, 1, 1, 0]), [1, -1, 1, 0])
  np.testing.assert_array_equal(vote([1, 50, 1, 0]), [1, -1, 1, 0])
  np.testing.assert_array_equal(vote([1, 1, 1, 1]), [0, -1, 0, -1])
  np.testing.assert_array_equal(vote([0, 0, 0, 0]), [0, 0, 0, 0])


def test_sign_flip_on_signs_sends_the_negated_majority():
  signs = MESSAGES.build('signs', 'message')
  sent = {'w': jnp.array([[1., -1., 1.], [1., 1., -1.], [-1., -1., 0.],
                          [1., 1., 1.]])}
  byzantine = jnp.array([False, False, False, True])
  forged = signs.project(attacks.omniscient.sign_flip().forge(
      sent, byzantine=byzantine, honest=~byzantine, key=None))
  np.testing.assert_array_equal(forged['w'][3], [-1, 1, 0])
  np.testing.assert_array_equal(forged['w'][:3], sent['w'][:3])


def _signs_config():
  config = fedavg_digits.get_config()
  config.data.num_clients = 12
  config.model = 'logistic'
  config.clients_per_round = 6
  config.client.local_steps = 2
  config.client.message = 'signs'
  config.aggregator = 'sign_majority'
  config.server.learning_rate = 0.01
  config.shard = False
  return config


def test_signsgd_round_moves_each_coordinate_by_the_server_step():
  config = _signs_config()
  config.attack.name = 'sign_flip'
  config.attack.fraction = 0.25
  experiment = train.build(config)
  before = jax.device_get(experiment.init_state()[0].params)
  state, _, metrics = make_rounds(experiment.round.fn, 2)(
      *experiment.init_state(), experiment.data, jnp.int32(2))
  moved = [np.abs(a - b) for a, b in zip(
      jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before))]
  moved = np.concatenate([m.ravel() for m in moved])
  on_grid = np.isclose(moved, 0, atol=1e-7) | np.isclose(moved, 0.01,
                                                         atol=1e-7)
  on_grid |= np.isclose(moved, 0.02, atol=1e-7)  # two rounds
  assert on_grid.all() and (moved > 0.015).any()
  np.testing.assert_array_equal(metrics['uplink_bits'], 650)  # 64 * 10 + 10
  np.testing.assert_allclose(metrics['uplink_ratio_vs_float32'], 1 / 32)


def test_identity_messages_log_float32_bits():
  config = _signs_config()
  config.client.message = 'identity'
  experiment = train.build(config)
  _, _, metrics = jax.jit(experiment.round.fn)(*experiment.init_state(),
                                               experiment.data)
  assert float(metrics['uplink_bits']) == 32 * 650
  assert float(metrics['uplink_ratio_vs_float32']) == 1
