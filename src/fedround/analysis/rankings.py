"""Rankings of methods over tasks: each task ranks its methods, and a
ranking rule combines the tasks (Borda's points, Kemeny's consensus); the
rules of ``scripts/rank.py`` and of a report's ranking section."""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from fedround.registry import ConfigError

def task_ranks(scores: dict[str, dict[str, float]],
               higher_is_better: bool = True) -> dict[str, dict[str, float]]:
  """Task -> method -> rank (1 = best) among the task's methods; tied
  methods share the mean of the ranks they span; NaN scores are left out."""
  sign = 1 if higher_is_better else -1
  ranks = {}
  for task, by_method in scores.items():
    valid = {m: sign * s for m, s in by_method.items() if not math.isnan(s)}
    ranks[task] = {
        m: 1 + sum(o > s for o in valid.values())
           + (sum(o == s for o in valid.values()) - 1) / 2
        for m, s in valid.items()}
  return ranks


def borda(scores: dict[str, dict[str, float]],
          higher_is_better: bool = True) -> list[tuple[str, float]]:
  """Borda count over tasks: [(method, points)], most points first.

  With m methods on a task the best gets m-1 points, the next m-2, ...;
  tied methods share the mean of the points they span. A method missing from
  a task (or NaN there) gets 0 points for it. Equal totals sort by name.
  """
  points = {m: 0.0 for by_method in scores.values() for m in by_method}
  for ranks in task_ranks(scores, higher_is_better).values():
    for method, rank in ranks.items():
      points[method] += len(ranks) - rank
  return sorted(points.items(), key=lambda item: (-item[1], item[0]))


MAX_KEMENY_METHODS = 16  # the exact search takes 2^m m^2 steps


def kemeny(scores: dict[str, dict[str, float]],
           higher_is_better: bool = True) -> list[tuple[str, float]]:
  """Kemeny consensus (Colombo et al., NeurIPS 2022): [(method,
  disagreements)], the ranking of methods with the least total Kendall-tau
  distance to the tasks' rankings, best first.

  A task prefers a to b when a ranks strictly better there; a tie, or a
  method missing from the task (or NaN there), states no preference. Exact:
  dynamic programming over subsets of methods. Among equally good rankings
  the lexicographically smallest sequence of names wins. A method's
  disagreements are the task preferences involving it that the ranking
  reverses (they sum to twice the total distance).
  """
  methods = sorted({m for by_method in scores.values() for m in by_method})
  count = len(methods)
  if count > MAX_KEMENY_METHODS:
    raise ConfigError(f'kemeny ranks at most {MAX_KEMENY_METHODS} methods '
                      f'exactly, got {count}; use borda')
  index = {m: i for i, m in enumerate(methods)}
  # prefer[a, b]: the number of tasks that rank a strictly better than b.
  prefer = np.zeros((count, count), np.int64)
  for ranks in task_ranks(scores, higher_is_better).values():
    for a, rank_a in ranks.items():
      for b, rank_b in ranks.items():
        prefer[index[a], index[b]] += rank_a < rank_b
  subsets, bits = np.arange(2 ** count), 1 << np.arange(count)
  members = (subsets[:, None] & bits > 0).astype(np.int64)  # [subsets, m]
  # against[s, j]: task preferences for a method of s over method j.
  against = members @ prefer

  def first_costs(s: np.ndarray) -> np.ndarray:
    """[len(s), methods]: column j is the least distance of ranking the
    methods of each subset s among themselves with method j first (a
    sentinel where j is not in s)."""
    rest = s[:, None] ^ bits
    return np.where(members[s] == 1,
                    against[rest, np.arange(count)] + cost[rest],
                    np.iinfo(np.int64).max)

  # cost[s]: the least distance of ranking the methods of s among themselves.
  cost = np.zeros(2 ** count, np.int64)
  sizes = members.sum(1)
  for size in range(1, count + 1):
    same_size = subsets[sizes == size]
    cost[same_size] = first_costs(same_size).min(1)
  order, left = [], 2 ** count - 1
  while left:  # the first method (by name) that an optimal ranking can take
    first = int(np.argmax(first_costs(np.array([left]))[0] == cost[left]))
    order.append(first)
    left ^= 1 << first
  position = np.argsort(order)
  above = position[:, None] < position[None, :]  # [a, b]: a ranked above b
  disagreements = np.where(above, prefer.T, prefer).sum(1)
  return [(methods[i], float(disagreements[i])) for i in order]


class Ranking(NamedTuple):
  """A rule that ranks methods across tasks: ``rank(task -> method ->
  score, higher_is_better) -> [(method, score)]``, best first; ``column``
  names its score and ``convention`` says how it treats ties and gaps."""
  rank: Callable[..., list[tuple[str, float]]]
  column: str
  convention: str


RANKINGS = {
    'borda': Ranking(borda, 'points',
                     'a method missing from a task gets 0 points for it'),
    'kemeny': Ranking(kemeny, 'disagreements',
                      'a tie or a missing method states no preference; '
                      'disagreements: the task preferences involving the '
                      'method that the ranking reverses'),
}
