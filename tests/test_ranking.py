"""Rankings of methods across tasks (Colombo et al., NeurIPS 2022): the exact
Kemeny consensus against brute force over permutations on random tables
with ties and missing entries, hand examples where Borda and Kemeny differ,
tie-breaking, the ranking table and bad input."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedround.analysis import rankings, report
from fedround.registry import ConfigError


def task_preferences(scores, higher_is_better):
  """(task, winner, loser) for every pair that a task orders strictly."""
  sign = 1 if higher_is_better else -1
  return [(task, a, b) for task, by_method in scores.items()
          for a, score_a in by_method.items()
          for b, score_b in by_method.items()
          if not math.isnan(score_a) and not math.isnan(score_b)
          and sign * score_a > sign * score_b]


def brute_force_kemeny(scores, higher_is_better):
  """The first permutation (in name order) with the least total Kendall-tau
  distance, and each method's reversed preferences."""
  methods = sorted({m for by_method in scores.values() for m in by_method})
  preferences = task_preferences(scores, higher_is_better)

  def reversed_by(order):
    position = {m: i for i, m in enumerate(order)}
    return [(a, b) for _, a, b in preferences if position[a] > position[b]]

  best = min(itertools.permutations(methods),
             key=lambda order: len(reversed_by(order)))
  return [(m, float(sum(m in pair for pair in reversed_by(best))))
          for m in best]


def random_table(rng):
  """3-6 methods on 2-5 tasks; scores from 3 values (ties); some entries
  missing or NaN."""
  methods = [f'm{i}' for i in rng.permutation(rng.integers(3, 7))]
  scores = {}
  for task in range(rng.integers(2, 6)):
    scores[f't{task}'] = {m: float(rng.choice([0.1, 0.2, 0.3, math.nan]))
                          for m in methods if rng.random() < 0.8}
  # Every method appears somewhere, so that both sides rank the same set.
  scores['t0'].update({m: 0.2 for m in methods
                       if not any(m in t for t in scores.values())})
  return scores


@pytest.mark.parametrize('seed', range(50))
def test_kemeny_is_the_brute_force_optimum(seed):
  rng = np.random.default_rng(seed)
  scores = random_table(rng)
  higher_is_better = bool(rng.integers(2))
  assert rankings.kemeny(scores, higher_is_better) == brute_force_kemeny(
      scores, higher_is_better)


def test_condorcet_winner_kemeny_first_borda_not():
  """Tasks as voters: 3 rank a > b > c and 2 rank b > c > a. a beats b and c
  3 to 2 (the Condorcet winner), but Borda puts b first."""
  scores = {f'abc{i}': {'a': 3.0, 'b': 2.0, 'c': 1.0} for i in range(3)}
  scores.update({f'bca{i}': {'b': 3.0, 'c': 2.0, 'a': 1.0} for i in range(2)})
  # Borda: a 3 * 2 + 2 * 0 = 6, b 3 * 1 + 2 * 2 = 7, c 0 + 2 * 1 = 2.
  assert rankings.borda(scores) == [('b', 7.0), ('a', 6.0), ('c', 2.0)]
  # a > b > c reverses b > a twice and c > a twice (distance 4; b > a > c
  # costs 3 + 2 = 5): a 4, b 2, c 2.
  assert rankings.kemeny(scores) == [('a', 4.0), ('b', 2.0), ('c', 2.0)]
  # Lower is better reverses every task: so does the consensus.
  assert [m for m, _ in rankings.kemeny(scores, higher_is_better=False)] == [
      'c', 'b', 'a']


def test_kemeny_ties_missing_and_tie_breaking():
  # A Condorcet cycle: a > b > c, b > c > a and c > a > b each cost 4, the
  # other three orders 5; the smallest sequence of names wins.
  cycle = {'t1': {'a': 3.0, 'b': 2.0, 'c': 1.0},
           't2': {'b': 3.0, 'c': 2.0, 'a': 1.0},
           't3': {'c': 3.0, 'a': 2.0, 'b': 1.0}}
  assert rankings.kemeny(cycle) == [('a', 3.0), ('b', 2.0), ('c', 3.0)]
  # Ties state nothing: all orders are free, so by name.
  assert rankings.kemeny({'t': {'z': 1.0, 'y': 1.0, 'x': 1.0}}) == [
      ('x', 0.0), ('y', 0.0), ('z', 0.0)]
  # c is missing from t1 and NaN in t2: only t3 places it, above a. t1 and
  # t2 disagree on a vs b, so every order with c above a costs 1: c a b,
  # b c a and c b a. The smallest by name is b c a.
  scores = {'t1': {'a': 0.9, 'b': 0.5}, 't2': {'a': 0.1, 'b': 0.2,
                                              'c': math.nan},
            't3': {'c': 0.7, 'a': 0.6}}
  assert rankings.kemeny(scores) == [('b', 1.0), ('c', 0.0), ('a', 1.0)]
  assert rankings.kemeny({}) == []


def test_kemeny_at_the_size_limit_and_beyond():
  names = [f'method_{i:02d}' for i in range(rankings.MAX_KEMENY_METHODS + 1)]
  # One task ranking the methods in reverse name order: that is the
  # consensus, with no disagreement.
  one_task = {'t': {m: float(i) for i, m in enumerate(names[:-1])}}
  assert rankings.kemeny(one_task) == [(m, 0.0) for m in names[-2::-1]]
  one_task['t'][names[-1]] = 0.0
  with pytest.raises(ConfigError, match='kemeny ranks at most 16 methods '
                     'exactly, got 17; use borda'):
    rankings.kemeny(one_task)


def test_ranking_table_and_registry():
  assert report.RANKINGS['kemeny'].rank is rankings.kemeny
  groups = [report.Group(method, task, [], {'final_test_accuracy': score},
                         {'final_test_accuracy': math.nan})
            for task, by_method in {
                'x': {'a': 0.9, 'b': 0.8, 'c': 0.7},
                'y': {'a': 0.5, 'b': 0.6, 'c': 0.4}}.items()
            for method, score in by_method.items()]
  table = report.ranking_markdown(groups, 'final_test_accuracy', 'kemeny')
  assert 'Methods ranked by kemeny on final_test_accuracy' in table
  assert '| rank | method | disagreements | x | y |' in table
  assert '| 1 | a | 1 | 1 | 2 |' in table
  assert '| 2 | b | 1 | 2 | 1 |' in table
  assert '| 3 | c | 0 | 3 | 3 |' in table
