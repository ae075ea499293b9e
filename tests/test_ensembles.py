"""Prediction-time voting of client models: majority vote and the run-off
election (Rezaei et al., ICML 2023) on hand-made ballots (ties in both
rounds), against a per-example Python reference on random ballots full of
ties, permutation invariance over models, jit and bad input."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedround.analysis.ensembles import majority_vote, runoff_election


def ballots(*per_model):
  """[models, 1 example, classes] from each model's logits."""
  return jnp.array(per_model, jnp.float32)[:, None, :]


def reference_runoff(logits):
  """Run-off election of one example, logits [models, classes], in Python."""
  votes = np.bincount(np.argmax(logits, -1), minlength=logits.shape[-1])
  first, second = sorted(range(len(votes)), key=lambda c: -votes[c])[:2]
  margin = sum(1 if row[first] > row[second] else -1 for row in logits)
  return first if margin > 0 else second if margin < 0 else min(first,
                                                                second)


def test_three_way_tie_in_round_one():
  """Each class gets one vote: majority takes class 0; the run-off is 0 vs
  1, and only the second model scores 0 above 1."""
  logits = ballots([0, 1, 0], [1, 0, 0], [0, 0.5, 1])
  assert majority_vote(logits).tolist() == [0]
  assert runoff_election(logits).tolist() == [1]


def test_tie_for_second_place():
  """Votes 3, 2, 2: m1 = 0 and m2 = 1 (the smaller of the tied classes).
  Class 2's voters prefer 1 to 0, so 1 wins 4 to 3, although 0 has the
  plurality. Had m2 been 2, class 1's voters would have made 0 win 5 to 2."""
  logits = ballots(*[[3, 2, 1]] * 3, *[[2, 3, 1]] * 2, *[[1, 2, 3]] * 2)
  assert majority_vote(logits).tolist() == [0]
  assert runoff_election(logits).tolist() == [1]


def test_even_runoff_goes_to_the_smaller_index():
  """Votes 1, 1, 2: m1 = 2, m2 = 0; 2 > 0 for its two voters only, so e = 0
  and class 0 wins, not m1."""
  logits = ballots([0, 0, 1], [0, 0, 1], [1, 0, 0], [0.5, 1, 0])
  assert majority_vote(logits).tolist() == [2]
  assert runoff_election(logits).tolist() == [0]


def test_ties_within_a_model():
  """A model with equal top logits votes the smaller class. In round 2 the
  comparison is strict: equal logits for m1 and m2 count against m1."""
  logits = ballots([1, 1, 0], [1, 1, 0], [0, 1, 0.5])
  assert majority_vote(logits).tolist() == [0]  # votes 2, 1, 0
  assert runoff_election(logits).tolist() == [1]  # e = 0 - 3
  unanimous_but_tied = ballots([2, 2], [2, 2])
  assert majority_vote(unanimous_but_tied).tolist() == [0]
  assert runoff_election(unanimous_but_tied).tolist() == [1]


def test_one_model_is_its_own_argmax():
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 50, 7))
  expected = jnp.argmax(logits[0], -1)
  np.testing.assert_array_equal(majority_vote(logits), expected)
  np.testing.assert_array_equal(runoff_election(logits), expected)


def test_random_ballots_match_the_reference_and_ignore_model_order():
  rng = np.random.default_rng(0)
  for models, classes in ((2, 2), (3, 3), (5, 4), (8, 10)):
    # Few distinct logit values: ties in every round.
    logits = rng.integers(0, 3, (models, 200, classes)).astype(np.float32)
    expected = [reference_runoff(logits[:, e]) for e in range(200)]
    runoff = runoff_election(jnp.asarray(logits))
    assert runoff.dtype == jnp.int32 and runoff.tolist() == expected
    votes = [np.bincount(np.argmax(logits[:, e], -1), minlength=classes)
             for e in range(200)]
    np.testing.assert_array_equal(majority_vote(jnp.asarray(logits)),
                                  np.argmax(votes, -1))
    for _ in range(3):
      shuffled = jnp.asarray(logits[rng.permutation(models)])
      np.testing.assert_array_equal(runoff_election(shuffled), runoff)
      np.testing.assert_array_equal(majority_vote(shuffled),
                                    majority_vote(jnp.asarray(logits)))


def test_jit_matches_eager():
  logits = jax.random.normal(jax.random.PRNGKey(1), (6, 40, 5))
  for vote in (majority_vote, runoff_election):
    np.testing.assert_array_equal(jax.jit(vote)(logits), vote(logits))


def test_bad_input():
  with pytest.raises(ValueError, match=r'\[models, examples, classes\] with '
                     r'at least one model, got shape \(4, 3\)'):
    majority_vote(jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match='at least one model'):
    runoff_election(jnp.zeros((0, 4, 3)))
  with pytest.raises(ValueError, match='run-off needs at least 2 classes'):
    runoff_election(jnp.zeros((3, 4, 1)))
