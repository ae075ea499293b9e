"""FRL (Mozaffari et al., USENIX Security 2023): the Borda vote on
rankings, the reversed-ranking attack, and FRL rounds (a permutation of the
initial scores, traced once, sharded == unsharded)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedround import attacks, train
from fedround.aggregators import build_aggregator
from fedround.config import base_config
from fedround.messages import MESSAGES, Payload, positions
from fedround.rounds import make_rounds

INITIAL = {'w': jnp.array([[0.4, -0.1], [0.7, 0.2]])}  # sorted: -.1 .2 .4 .7


def _scores(*values):
  return np.array(values, np.float32)


def _vote(rankings, weights, initial=INITIAL):
  rule = build_aggregator('frl_vote')
  shape = initial['w'].shape
  messages = {'w': jnp.asarray(rankings, jnp.int32).reshape((-1,) + shape)}
  new, state = rule.update(messages, rule.init(initial), initial,
                           weights=jnp.asarray(weights, jnp.float32),
                           key=jax.random.PRNGKey(0))
  return np.asarray(new['w']).reshape(-1)


def test_borda_vote_on_hand_written_rankings():
  """Positions summed per edge: [0+1+3, 1+0+2, 2+2+0, 3+3+1] = [4, 3, 4, 7],
  so the order is edge 1, edge 0, edge 2 (the tie with edge 0 goes to the
  lower index), edge 3, and they get -0.1, 0.2, 0.4, 0.7."""
  rankings = [[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 0, 1]]
  np.testing.assert_array_equal(_vote(rankings, [1, 1, 1]),
                                _scores(0.2, -0.1, 0.4, 0.7))
  # One client one vote: example counts do not weigh.
  np.testing.assert_array_equal(_vote(rankings, [3, 100, 1]),
                                _scores(0.2, -0.1, 0.4, 0.7))


def test_absent_clients_do_not_vote_and_ties_go_to_the_lower_index():
  """Two opposite rankings tie every edge: the edges keep index order. The
  absent third client would have decided it."""
  rankings = [[0, 1, 2, 3], [3, 2, 1, 0], [3, 2, 1, 0]]
  np.testing.assert_array_equal(_vote(rankings, [5, 2, 0]),
                                _scores(-0.1, 0.2, 0.4, 0.7))
  np.testing.assert_array_equal(_vote(rankings, [5, 2, 1]),
                                _scores(0.7, 0.4, 0.2, -0.1))


def test_no_voter_leaves_the_scores():
  params = {'w': jnp.array([[0.7, 0.2], [-0.1, 0.4]])}
  rule = build_aggregator('frl_vote')
  new, _ = rule.update({'w': jnp.zeros((3, 2, 2), jnp.int32)},
                       rule.init(INITIAL), params,
                       weights=jnp.zeros(3), key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(new['w'], params['w'])


def test_vote_is_a_permutation_invariant_to_client_order():
  rng = np.random.default_rng(0)
  n = 50
  initial = {'w': jnp.asarray(rng.normal(size=(5, 10)), jnp.float32)}
  rankings = np.stack([rng.permutation(n) for _ in range(7)])
  weights = np.array([1, 1, 0, 1, 1, 1, 0])
  voted = _vote(rankings, weights, initial)
  np.testing.assert_array_equal(np.sort(voted),
                                np.sort(np.asarray(initial['w']).ravel()))
  for _ in range(5):
    order = rng.permutation(7)
    np.testing.assert_array_equal(
        _vote(rankings[order], weights[order], initial), voted)


def test_one_client_moves_each_summed_position_by_at_most_n_minus_1():
  """Encoded rankings are permutations of 0..n-1, so replacing one client's
  (by its reversal or any other ranking) moves each edge's sum by at most
  n - 1; the reversal by exactly |n - 1 - 2p|."""
  rng = np.random.default_rng(1)
  ranks = MESSAGES.build('ranks', 'message')
  shape = (6, 7)
  n = 42
  for trial in range(20):
    deltas = {'w': jnp.asarray(rng.normal(size=(5,) + shape), jnp.float32)}
    sent = np.asarray(ranks.encode(deltas, {'w': jnp.zeros(shape)})['w'])
    for row in sent:
      np.testing.assert_array_equal(np.sort(row.ravel()), np.arange(n))
    byzantine = jnp.arange(5) == trial % 5
    reversed_ = np.asarray(attacks.rankings.reverse_ranking().forge(
        {'w': jnp.asarray(sent)}, byzantine=byzantine, honest=~byzantine,
        key=None)['w'])
    other = sent.copy()
    other[trial % 5] = rng.permutation(n).reshape(shape)
    for forged in (reversed_, other):
      moved = np.abs(forged.sum(0) - sent.sum(0))
      assert moved.max() <= n - 1
    own = sent[trial % 5]
    np.testing.assert_array_equal(np.abs(reversed_.sum(0) - sent.sum(0)),
                                  np.abs(n - 1 - 2 * own))


def test_positions_rank_raw_scores_from_least_to_most():
  np.testing.assert_array_equal(positions(jnp.array([0.3, -0.9, 0.5, 0.1])),
                                [2, 0, 3, 1])


def test_reversed_ranking_attack():
  sent = {'w': jnp.array([[0, 1, 2, 3], [2, 0, 3, 1], [1, 3, 0, 2]])}
  byzantine = jnp.array([False, True, True])
  forged = attacks.rankings.reverse_ranking().forge(sent, byzantine=byzantine,
                                           honest=~byzantine, key=None)
  np.testing.assert_array_equal(forged['w'], [[0, 1, 2, 3], [1, 3, 0, 2],
                                              [2, 0, 3, 1]])
  # Colluding: the Byzantine sums [3, 3, 3, 3] tie, ranked 0 1 2 3 by
  # index, and reversed.
  forged = attacks.rankings.reverse_ranking(collude=True).forge(
      sent, byzantine=byzantine, honest=~byzantine, key=None)
  np.testing.assert_array_equal(forged['w'], [[0, 1, 2, 3], [3, 2, 1, 0],
                                              [3, 2, 1, 0]])


def frl_config():
  """A tiny FRL run on digits."""
  config = base_config()
  config.data = dict(name='digits', num_clients=16, alpha=1.0, seed=0)
  config.model = 'supermask_mlp(hidden=(16,))'
  config.client.message = 'ranks'
  config.aggregator = 'frl_vote'
  config.clients_per_round = 10
  config.client.learning_rate = 0.4
  config.client.batch_size = 8
  config.client.local_steps = 3
  config.client.local_epochs = 0
  config.rounds = 3
  config.eval_every = 3
  config.checkpoint_every = 3
  config.progress = False
  return config


def _run_rounds(config, rounds):
  experiment = train.build(config)
  initial = jax.device_get(experiment.init_state()[0].params)
  fn = make_rounds(experiment.round.fn, rounds)
  state, _, metrics = fn(*experiment.init_state(), experiment.data,
                         jnp.int32(rounds))
  return experiment, initial, jax.device_get(state.params), metrics


def test_frl_round_keeps_a_permutation_of_the_initial_scores():
  config = frl_config()
  config.shard = False
  config.attack.name = 'reverse_ranking'
  config.attack.fraction = 0.2
  _, initial, params, metrics = _run_rounds(config, 3)
  for before, after in zip(jax.tree.leaves(initial), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.sort(after.ravel()),
                                  np.sort(before.ravel()))
    assert not np.array_equal(after, before)
  assert np.sum(metrics['byzantine']) > 0
  # 64 * 16 edges at 10 bits, 16 * 10 at 8 bits; float32: 32 per edge.
  np.testing.assert_array_equal(metrics['uplink_bits'], 1024 * 10 + 160 * 8)
  np.testing.assert_allclose(metrics['uplink_ratio_vs_float32'],
                             (1024 * 10 + 160 * 8) / (32 * 1184))


def test_frl_round_sharded_equals_unsharded_and_traces_once(tmp_path,
                                                            traces):
  assert jax.device_count() == 8
  config = frl_config()  # a cohort of 10, padded to 16 on 8 devices
  # Chunks of eval_every = 2 rounds: the sharded chunk is the program the
  # run below compiles.
  config.rounds, config.eval_every = 5, 2  # 3 calls, the last partial
  config.checkpoint_every = 2
  results = {}
  for shard in (False, True):
    config.shard = shard
    experiment, _, params, metrics = _run_rounds(config, 2)
    results[shard] = params, metrics['train_loss']
  assert experiment.mesh is not None and experiment.round.cohort_buffer == 16
  for a, b in zip(*(jax.tree.leaves(results[s][0]) for s in (False, True))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(results[True][1], results[False][1], rtol=1e-5)

  result = train.run(config, str(tmp_path))
  assert traces[-1] == 1
  assert int(result.state.round) == 5


@pytest.mark.parametrize('changes, expected', [
    (dict(aggregator='weighted_mean'),
     "config.client.message 'ranks' cannot feed config.aggregator "
     "'weighted_mean', which reads: identity, signs"),
    (dict(message='identity'),
     "config.client.message 'identity' cannot feed config.aggregator "
     "'frl_vote', which reads: ranks"),
    (dict(aggregator='clip(max_norm=1) | frl_vote'),
     'which reads: no kind all its parts share'),
    (dict(model='mlp'),
     "config.client.message 'ranks' ranks supermask scores, but "
     "config.model 'mlp' has ['params']['Dense_0']['bias']; supermask "
     'models: supermask_cnn, supermask_mlp'),
    (dict(attack='optimal_alie'),
     "config.attack.name 'optimal_alie' cannot forge 'ranks' messages; "
     "attacks on 'ranks' messages: label_flip, mimic, none, "
     'reverse_ranking'),
    (dict(attack='reverse_ranking', message='identity',
          aggregator='median'),
     "config.attack.name 'reverse_ranking' cannot forge 'identity' "
     "messages; attacks on 'identity' messages: "),
    (dict(attack='alie', message='signs', aggregator='sign_majority'),
     "attacks on 'signs' messages: label_flip, mimic, none, sign_flip"),
    (dict(server='fedadam'),
     "config.server: config.aggregator 'frl_vote' sets the global model "
     'itself, so no server optimizer runs'),
    (dict(message='rank'), "config.client.message: unknown message 'rank'; "
     'valid messages: identity, ranks, signs'),
])
def test_bad_combinations_fail_before_training(changes, expected):
  config = frl_config()
  config.client.message = changes.get('message', config.client.message)
  config.aggregator = changes.get('aggregator', config.aggregator)
  config.model = changes.get('model', config.model)
  config.attack.name = changes.get('attack', 'none')
  config.server.optimizer = changes.get('server', 'sgd')
  with pytest.raises(train.ConfigError) as error:
    train.check(config)
  assert expected in str(error.value)
  assert '\n' not in str(error.value)
  if changes.get('message') == 'identity' and 'attack' in changes:
    # The registry's attacks on real numbers, whichever are registered.
    listed = str(error.value).split(expected)[1].split(', ')
    assert listed == sorted(name for name in attacks.ATTACKS.names() if
                            Payload.REAL in attacks.ATTACKS.build(
                                name, 'attack').forges)
    assert {'alie', 'gaussian', 'inf', 'ipm', 'label_flip', 'mimic', 'nan',
            'none', 'optimal_alie', 'optimal_ipm', 'sign_flip'} <= set(listed)
