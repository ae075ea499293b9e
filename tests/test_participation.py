"""Participation models: FedAU's p_i from the label mix, empirical and
stationary frequencies, the cyclic pattern against a transcription of the
official sampler, the buffer (masks, overflow, the refusal of one too
small), determinism and jit."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedround.data import participation as part
from fedround.registry import ConfigError

MODELS = {'bernoulli': part.bernoulli, 'markov': part.markov,
          'cyclic': part.cyclic}


def simulator(participation, rounds):
  """seed -> (ids, present [rounds, C], initial state): ``rounds`` rounds
  from the seed's initial state, in one jitted scan."""

  @jax.jit
  def run(key):
    k_init, k_run = jax.random.split(key)
    state = participation.init(k_init)

    def body(state, t):
      ids, present, state = participation.sample(
          jax.random.fold_in(k_run, t), state, t)
      return state, (ids, present)

    return jax.lax.scan(body, state, jnp.arange(rounds))[1], state

  def simulate(seed):
    (ids, present), state = run(jax.random.PRNGKey(seed))
    return np.asarray(ids), np.asarray(present), state

  return simulate


def simulate(participation, rounds, seed=0):
  return simulator(participation, rounds)(seed)


def membership(ids, present, num_clients):
  """bool[rounds, N]: who took part in each round; checks the buffer."""
  assert ids.dtype == np.int32 and present.dtype == bool
  assert np.all((ids >= 0) & (ids < num_clients))
  # Participants fill the first slots.
  assert np.all(present[:, :-1] >= present[:, 1:])
  taken = np.zeros((len(ids), num_clients), bool)
  rounds = np.repeat(np.arange(len(ids)), ids.shape[1]).reshape(ids.shape)
  taken[rounds[present], ids[present]] = True
  assert np.array_equal(taken.sum(1), present.sum(1))  # no repeats
  return taken


def test_uniform():
  participation = part.uniform(50, 20)
  ids, present, state = simulate(participation, 5)
  membership(ids, present, 50)
  assert present.all() and state == ()
  np.testing.assert_allclose(participation.probabilities, 0.4)
  with pytest.raises(ConfigError, match=re.escape(
      'config.clients_per_round: cohort of 51 clients is impossible in a '
      'federation of 50; valid: 1..50')):
    part.uniform(50, 51)


def test_probabilities_follow_the_label_mix():
  # 4 classes; clients 0-3 hold one class each, client 4 half of classes 0
  # and 1, client 5 the same mix as client 0, client 6 nothing.
  counts = np.array([[9, 0, 0, 0], [0, 5, 0, 0], [0, 0, 7, 0], [0, 0, 0, 1],
                     [3, 3, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
  p = part.participation_probabilities(7, mean=0.1, floor=1e-6, alpha=1.0,
                                       label_counts=counts, seed=3)
  # p_i = 0.1 * 4 * <q_i, v>: single-class clients give 0.4 v, which sums
  # to 0.4 (their mean is `mean`); a mix averages its classes.
  np.testing.assert_allclose(p[:4].sum(), 0.4, rtol=1e-9)
  np.testing.assert_allclose(p[4], (p[0] + p[1]) / 2, rtol=1e-9)
  assert p[5] == p[0] and p[6] == 1e-6
  # The same label mix everywhere gives every client exactly `mean`.
  np.testing.assert_allclose(part.participation_probabilities(
      5, mean=0.3, label_counts=np.ones((5, 10))), 0.3)
  # The floor and the cap at 1.
  capped = part.participation_probabilities(
      4, mean=1.0, floor=0.5, alpha=0.05, label_counts=np.eye(4), seed=1)
  assert capped.min() == 0.5 and capped.max() == 1.0


def test_probabilities_without_labels():
  p = part.participation_probabilities(1000, seed=0)
  assert 0.09 < p.mean() < 0.13 and p.min() == 0.02 and p.max() <= 1
  assert p.std() > 0.05  # heterogeneous
  np.testing.assert_array_equal(p, part.participation_probabilities(
      1000, seed=0))
  assert not np.array_equal(p, part.participation_probabilities(
      1000, seed=1))
  for model in MODELS.values():
    np.testing.assert_allclose(model(1000, 300, seed=0).probabilities, p,
                               atol=1 / 100 if model is part.cyclic else 0)


def test_bernoulli_frequencies_match_p():
  rounds = 6000
  participation = part.bernoulli(30, 30, mean=0.3, seed=2)
  p = participation.probabilities
  taken = membership(*simulate(participation, rounds)[:2], 30)
  sd = np.sqrt(p * (1 - p) / rounds)
  assert np.all(np.abs(taken.mean(0) - p) < 5 * sd + 1e-9)
  # Independent across rounds: client 0's presence is uncorrelated.
  x = taken[:, np.argmax(p * (1 - p))].astype(float)
  assert abs(np.corrcoef(x[1:], x[:-1])[0, 1]) < 5 / np.sqrt(rounds)


def test_markov_stationary_frequencies_and_transitions():
  rounds = 8000
  participation = part.markov(30, 30, mean=0.3, seed=2)
  p = participation.probabilities
  taken = membership(*simulate(participation, rounds)[:2], 30)
  # The official transitions: off -> on 0.05, on -> off 0.05 (1/p - 1),
  # both divided by the latter where it exceeds 1.
  to_off = 0.05 * (1 / p - 1)
  to_on = 0.05 / np.maximum(to_off, 1)
  to_off = np.minimum(to_off, 1)
  np.testing.assert_allclose(to_on / (to_on + to_off), p)
  # The time average of a two-state chain started stationary has variance
  # p (1 - p) / R (1 + lam) / (1 - lam), lam = 1 - a - b.
  lam = 1 - to_on - to_off
  sd = np.sqrt(p * (1 - p) / rounds * (1 + lam) / (1 - lam))
  assert np.all(np.abs(taken.mean(0) - p) < 5 * sd + 1e-9)
  # Leaving the on state: Bernoulli(b_i) per on round.
  on = taken[:-1]
  stays = (on & taken[1:]).sum(0)
  ons = on.sum(0)
  rate = 1 - stays / np.maximum(ons, 1)
  tolerance = 5 * np.sqrt(to_off * (1 - to_off) / np.maximum(ons, 1)) + 1e-9
  assert np.all((np.abs(rate - to_off) < tolerance) | (ons < 20))


def official_cyclic(cycle, p, first_switch, rounds):
  """IBM/fedau util/util.py WorkerSampler('cyclic-<cycle>'), with its
  random rounds_to_switch given."""
  active_rounds = max(1, int(np.round(cycle * p)))
  inactive_rounds = max(1, cycle - active_rounds)
  active, to_switch, out = False, first_switch, []
  for _ in range(rounds):
    if to_switch == 0:
      active = not active
      to_switch = active_rounds if active else inactive_rounds
    to_switch -= 1
    out.append(active)
  return out


def test_cyclic_pattern_is_the_official_one():
  cycle, rounds, clients = 20, 70, 40
  participation = part.cyclic(clients, clients, cycle=cycle, mean=0.3,
                              seed=4)
  p = part.participation_probabilities(clients, mean=0.3, seed=4)
  ids, present, first_on = simulate(participation, rounds)
  taken = membership(ids, present, clients)
  first_on = np.asarray(first_on)
  on_rounds = np.maximum(1, np.round(cycle * p))
  off_rounds = np.maximum(1, cycle - on_rounds)
  assert np.all((first_on >= 0) & (first_on < off_rounds))
  for i in range(clients):
    np.testing.assert_array_equal(
        taken[:, i], official_cyclic(cycle, p[i], first_on[i], rounds))
  np.testing.assert_allclose(participation.probabilities,
                             on_rounds / (on_rounds + off_rounds))
  assert len(np.unique(participation.probabilities)) > 3


def test_overflow_keeps_a_random_subset():
  active = jnp.zeros(30, bool).at[jnp.arange(3, 30, 3)].set(True)  # 9
  fill = jax.jit(lambda k: part._fill_buffer(k, active, 4))
  hits = np.zeros(30)
  for seed in range(300):
    ids, present = map(np.asarray, fill(jax.random.PRNGKey(seed)))
    assert present.all() and len(set(ids)) == 4
    assert np.all(np.asarray(active)[ids])
    hits[ids] += 1
  # Each active client is kept with probability 4/9.
  sd = np.sqrt(300 * 4 / 9 * 5 / 9)
  assert np.all(np.abs(hits[np.asarray(active)] - 300 * 4 / 9) < 5 * sd)
  # Fewer active than slots: all of them first, then absent slots.
  ids, present = part._fill_buffer(jax.random.PRNGKey(0), active, 12)
  assert np.asarray(present).tolist() == [True] * 9 + [False] * 3
  assert sorted(np.asarray(ids)[:9]) == list(range(3, 30, 3))


@pytest.mark.parametrize('name', ['uniform'] + list(MODELS))
def test_deterministic_and_jit_equals_eager(name):
  participation = (part.uniform(40, 10) if name == 'uniform'
                   else MODELS[name](40, 20, mean=0.2))
  state = participation.init(jax.random.PRNGKey(1))
  key, t = jax.random.PRNGKey(7), jnp.int32(3)
  eager = participation.sample(key, state, t)
  jitted = jax.jit(participation.sample)(key, state, t)
  for a, b, c in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted),
                     jax.tree.leaves(participation.sample(key, state, t))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  simulate_rounds = simulator(participation, 8)
  ids, present, _ = simulate_rounds(0)
  again, present_again, _ = simulate_rounds(0)
  other, _, _ = simulate_rounds(1)
  assert np.array_equal(ids, again) and np.array_equal(present, present_again)
  assert not np.array_equal(ids, other)


@pytest.mark.parametrize('name, safe', [
    # Every p_i = 0.1 (one label mix): the count is Binomial(100, 0.1),
    # 10 + 4 * 3 = 22.
    ('bernoulli', 22), ('markov', 22),
    # cycle 10: A = 1, I = 9; in steady rounds P(on) = 1/9:
    # 100/9 + 4 sqrt(100 (1/9)(8/9)) = 23.68 -> 24.
    ('cyclic', 24)])
def test_too_small_buffer_is_refused(name, safe):
  kwargs = dict(label_counts=np.ones((100, 3)))
  if name == 'cyclic':
    kwargs['cycle'] = 10
  with pytest.raises(ConfigError, match=re.escape(
      f'config.clients_per_round: a buffer of {safe - 1} slots is too small '
      f'for {name} participation')) as error:
    MODELS[name](100, safe - 1, **kwargs)
  assert f'smallest safe value is {safe} ' in str(error.value)
  assert MODELS[name](100, safe, **kwargs).cohort_size == safe
  with pytest.raises(ConfigError, match='valid: 1..100'):
    MODELS[name](100, 101, **kwargs)


@pytest.mark.parametrize('make, message', [
    (lambda: part.bernoulli(10, 10, mean=0.0), 'mean'),
    (lambda: part.bernoulli(10, 10, floor=0.0), 'floor'),
    (lambda: part.bernoulli(10, 10, alpha=0.0), 'alpha'),
    (lambda: part.bernoulli(10, 10, label_counts=np.ones((9, 3))),
     'label_counts'),
    (lambda: part.bernoulli(10, 10, label_counts=-np.ones((10, 3))),
     'label_counts'),
    (lambda: part.markov(10, 10, to_active=0.0), 'to_active'),
    (lambda: part.cyclic(10, 10, cycle=1), 'cycle'),
    (lambda: part.cyclic(10, 10, cycle=2.5), 'cycle'),
])
def test_impossible_parameters_are_refused(make, message):
  with pytest.raises(ValueError, match=message):
    make()
