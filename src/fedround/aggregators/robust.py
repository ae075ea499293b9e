"""Byzantine-robust aggregation rules (ALGORITHMS.md section 2).

Every rule treats the present clients (weight > 0) uniformly: it ignores the
weight magnitudes, and absent slots (cohort padding, excluded non-finite
updates) never enter a median, a distance or a mean, whatever their rows
hold. The buffer size C is static; the present count n is not, so each rule
defines what it does when fewer clients are present than it needs (its
docstring says how it degrades); with n = 0 every rule returns zeros, so the
global model stays where it is. Ties go to the lower client index (MDA
first breaks them by spread).

Coordinate-wise rules work per leaf. Distance-based rules work from the
C x C Gram matrix of the updates centred on the smallest present update
(``stack.anchor``); the iterative ones (geometric median, centered
clipping) keep their iterate as coefficients over that stack and form the
d-vector once.
MoNNA needs only the distances to one update and takes them directly.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, RoundContext, stateless

_MDA_BATCH = 1024  # candidate subsets whose diameters are computed at once


def median() -> Aggregator:
  """Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018); the mean of the
  two middle values for an even count."""

  def aggregate(updates, weights):
    return stack.coordinate_median(updates, stack.present(weights))

  return stateless(aggregate)


def trimmed_mean(f: int, num_clients: int | None = None) -> Aggregator:
  """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate
  drop the f lowest and f highest values and average the rest.

  With n <= 2f present the trim is min(f, (n - 1) // 2), so at least one
  value (the median for odd n) remains.
  """
  _check_f('trimmed_mean', f, num_clients, 'more than 2f',
           lambda clients: (clients - 1) // 2)

  def aggregate(updates, weights):
    present = stack.present(weights)
    trim = _clipped_f(f, jnp.sum(present))
    return jax.tree.map(lambda u: _trimmed_leaf(u, present, trim), updates)

  return stateless(aggregate)


def meamed(f: int, num_clients: int | None = None) -> Aggregator:
  """Mean around the median (Xie, Koyejo, Gupta, "Generalized
  Byzantine-tolerant SGD", 2018): per coordinate, the mean of the n - f
  values closest to the median.

  With n <= 2f present f is clipped to (n - 1) // 2 (a majority is kept).
  """
  _check_f('meamed', f, num_clients, 'more than 2f',
           lambda clients: (clients - 1) // 2)

  def aggregate(updates, weights):
    present = stack.present(weights)
    count = jnp.sum(present)
    kept = count - _clipped_f(f, count)
    return jax.tree.map(lambda u: _mean_nearest_median(u, present, kept),
                        updates)

  return stateless(aggregate)


def krum(f: int, num_clients: int | None = None) -> Aggregator:
  """Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017): the update whose summed squared
  distance to its n - f - 2 nearest others is smallest.

  With n <= f + 2 present each score sums over one neighbour (none when
  n = 1, so a lone update is returned).
  """
  _check_f('krum', f, num_clients, 'more than 2f + 2',
           lambda clients: (clients - 3) // 2)

  def aggregate(updates, weights):
    present = stack.present(weights)
    scores = _krum_scores(stack.sq_distances(updates, present), present, f)
    chosen = (jnp.arange(len(present)) == jnp.argmin(scores)) & present
    return stack.combine(stack.zero_absent(updates, present), chosen)

  return stateless(aggregate)


def multi_krum(f: int, m: int | None = None,
               num_clients: int | None = None) -> Aggregator:
  """Multi-Krum (Blanchard et al., NeurIPS 2017): the mean of the m updates
  with the lowest Krum scores (m = n - f by default).

  Scores degrade as in ``krum``; m is clipped to max(n - f, 1).
  """
  _check_f('multi_krum', f, num_clients, 'more than 2f + 2',
           lambda clients: (clients - 3) // 2)
  if m is not None:
    if not isinstance(m, int) or m < 1:
      raise ValueError(f'm (the number of best-scored updates averaged) must '
                       f'be an integer >= 1 or None for n - f, got {m!r}')
    if num_clients is not None and m > num_clients - f:
      raise ValueError(f'multi_krum averages m of the n - f best-scored '
                       f'updates, so m must be in 1..{num_clients - f} with '
                       f'f={f} and {num_clients} clients, got m={m}')

  def aggregate(updates, weights):
    present = stack.present(weights)
    scores = _krum_scores(stack.sq_distances(updates, present), present, f)
    averaged = jnp.maximum(jnp.sum(present) - f, 1)
    if m is not None:
      averaged = jnp.minimum(averaged, m)
    selected = (_ranks(scores) < averaged) & present
    return stack.mean_of(stack.zero_absent(updates, present), selected)

  return stateless(aggregate)


def geometric_median(iterations: int = 8, nu: float = 1e-6) -> Aggregator:
  """Geometric median by smoothed Weiszfeld (RFA: Pillutla, Kakade,
  Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022):
  beta_i = max(||x_i - z||, nu), z <- sum(x_i / beta_i) / sum(1 / beta_i),
  ``iterations`` steps from z = mean.

  z is kept as coefficients a (sum a = 1) over the present updates, so
  ||x_i - z||^2 = G_ii - 2 (G a)_i + a^T G a on the anchor-centred Gram
  matrix G. A lone present update is returned as is.
  """
  _check_iterations(iterations)
  if not nu > 0:
    raise ValueError(f'nu (the smallest distance Weiszfeld divides by) must '
                     f'be > 0, got {nu!r}')

  def aggregate(updates, weights):
    present = stack.present(weights)
    center, offsets = _anchored(updates, present)
    # Distances in units of the stack's scale, so no square overflows.
    scale = stack.scale(offsets, present)
    gram = stack.gram(stack.divided(offsets, scale))
    floor = jnp.maximum(nu / scale, jnp.finfo(gram.dtype).tiny)

    def step(_, coefficients):
      beta = jnp.maximum(jnp.sqrt(_sq_distances_to(gram, coefficients)),
                         floor)
      # 1 / beta_i relative to the largest, so the sum cannot overflow.
      nearest = jnp.min(jnp.where(present, beta, jnp.inf))
      inverse = jnp.where(present, nearest / beta, 0)
      total = jnp.sum(inverse)
      return inverse / jnp.where(total > 0, total, 1)

    uniform = present / jnp.maximum(jnp.sum(present), 1)
    coefficients = jax.lax.fori_loop(0, iterations, step,
                                     uniform.astype(gram.dtype))
    return jax.tree.map(lambda c, o: (c + o).astype(c.dtype), center,
                        stack.combine(offsets, coefficients))

  return stateless(aggregate)


def centered_clipping(tau: float = 1.0, iterations: int = 3) -> Aggregator:
  """Centered clipping (Karimireddy, He, Jaggi, "Learning from History for
  Byzantine Robust Optimization", ICML 2021):
  v <- v + mean_i (x_i - v) min(1, tau / ||x_i - v||), ``iterations`` steps
  from the previous round's aggregate, which is the state (zeros at init).

  v is kept as coefficients over the anchor-centred stack augmented with
  the starting point v0. With no client present the aggregate is zero and
  the state keeps v0.
  """
  _check_iterations(iterations)
  if not tau > 0:
    raise ValueError(f'tau (the clipping radius around the previous '
                     f'aggregate) must be > 0, got {tau!r}')

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key, context
    present = stack.present(weights)
    count = jnp.sum(present)
    center, offsets = _anchored(updates, present)
    start = jax.tree.map(lambda v, c: v - c, state, center)
    # Distances in units of the scale of the stack and v0, so no square
    # overflows; tau in the same units.
    unit = jnp.maximum(stack.scale(offsets, present), stack.scale(
        jax.tree.map(lambda s: s[None], start), jnp.ones(1, bool)))
    scaled_offsets, scaled_start = (stack.divided(offsets, unit),
                                    stack.divided(start, unit))
    cross = _inner_products(scaled_offsets, scaled_start)
    start_sq_norm = stack.sq_norms(jax.tree.map(lambda s: s[None],
                                                scaled_start))
    # Column 0 is v0 - center, columns 1..C the centred updates.
    gram = jnp.block([[start_sq_norm[:, None], cross[None, :]],
                      [cross[:, None], stack.gram(scaled_offsets)]])
    tiny = jnp.finfo(gram.dtype).tiny
    radius = tau / unit

    def step(_, coefficients):
      distances = jnp.sqrt(_sq_distances_to(gram, coefficients)[1:])
      scale = jnp.where(present, jnp.minimum(
          1, radius / jnp.maximum(distances, tiny)), 0)
      scale = scale / jnp.maximum(count, 1)
      return (coefficients * (1 - jnp.sum(scale))
              + jnp.concatenate([jnp.zeros(1, scale.dtype), scale]))

    start_coefficients = jnp.zeros(len(present) + 1, gram.dtype).at[0].set(1)
    coefficients = jax.lax.fori_loop(0, iterations, step, start_coefficients)
    moved = stack.combine(offsets, coefficients[1:])
    clipped = jax.tree.map(lambda c, s, o: c + coefficients[0] * s + o,
                           center, start, moved)
    aggregate = jax.tree.map(
        lambda v, o: jnp.where(count > 0, v, 0).astype(o.dtype), clipped,
        moved)
    new_state = jax.tree.map(lambda v, s: v.astype(s.dtype), clipped, state)
    return aggregate, new_state

  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  return Aggregator(init, update)


def bulyan(f: int, num_clients: int | None = None) -> Aggregator:
  """Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
  Distributed Learning in Byzantium", ICML 2018): select theta = n - 2f
  updates by repeated Krum (each on the remaining set, with its own
  n' - f - 2 neighbours, removing the winner), then per coordinate average
  the beta = theta - 2f selected values closest to their median.

  With n < 4f + 3 present, theta = max(n - 2f, 1) and
  beta = max(theta - 2f, 1), so it degrades towards the median of the
  Krum-selected updates (a lone update is returned as is).
  """
  _check_f('bulyan', f, num_clients, 'at least 4f + 3',
           lambda clients: (clients - 3) // 4)

  def aggregate(updates, weights):
    present = stack.present(weights)
    distances = stack.sq_distances(updates, present)
    num_selected = jnp.maximum(jnp.sum(present) - 2 * f, 1)
    slots = jnp.arange(len(present))

    def select(step, carry):
      remaining, selected = carry
      winner = jnp.argmin(_krum_scores(distances, remaining, f))
      chosen = (slots == winner) & remaining & (step < num_selected)
      return remaining & ~chosen, selected | chosen

    _, selected = jax.lax.fori_loop(
        0, max(len(present) - 2 * f, 1), select,
        (present, jnp.zeros_like(present)))
    averaged = jnp.minimum(jnp.maximum(num_selected - 2 * f, 1),
                           jnp.sum(selected))
    return jax.tree.map(lambda u: _mean_nearest_median(u, selected, averaged),
                        updates)

  return stateless(aggregate)


def mda(f: int, num_clients: int | None = None,
        max_subsets: int = 100_000) -> Aggregator:
  """Minimum Diameter Averaging (El Mhamdi, Guerraoui, Rouault,
  "Distributed Momentum for Byzantine-resilient Stochastic Gradient
  Descent", ICLR 2021; ByzFL's MDA): the mean of the n - f present updates
  whose largest pairwise distance is smallest.

  The diameter is one pair, so many subsets can share it: ties go to the
  subset with the smallest sum of squared pairwise distances (the least
  spread), then to the lexicographically first, which keeps the rule
  invariant to the order of the clients.

  The C-choose-f removal sets are enumerated when the rule is traced (as
  the lexicographic (C - f)-subsets of the C slots); refused above
  ``max_subsets``. A removal set is valid when it holds exactly
  min(f, n - 1) present clients, so the chosen subset never holds an absent
  slot, and with n <= f it is a single update.
  """
  _check_f('mda', f, num_clients, 'more than f',
           lambda clients: clients - 1)
  if not isinstance(max_subsets, int) or max_subsets < 1:
    raise ValueError(f'max_subsets (the most candidate subsets mda '
                     f'enumerates) must be an integer >= 1, got '
                     f'{max_subsets!r}')
  if num_clients is not None:
    _check_mda_subsets(num_clients, f, max_subsets)

  def aggregate(updates, weights):
    present = stack.present(weights)
    _check_f('mda', f, len(present), 'more than f',
             lambda clients: clients - 1)
    _check_mda_subsets(len(present), f, max_subsets)
    kept = jnp.asarray(_kept_subsets(len(present), f))
    distances = stack.sq_distances(updates, present)
    count = jnp.sum(present)
    valid = (jnp.sum(~kept & present, axis=1)
             == jnp.minimum(f, count - 1))

    def diameter_and_spread(keep):
      members = keep & present
      pairs = jnp.where(members[:, None] & members[None, :], distances, 0)
      return jnp.max(pairs), jnp.sum(pairs)

    diameters, spreads = jax.lax.map(diameter_and_spread, kept,
                                     batch_size=_MDA_BATCH)
    diameters = jnp.where(valid, diameters, jnp.inf)
    smallest = valid & (diameters == jnp.min(diameters))
    best = jnp.argmin(jnp.where(smallest, spreads, jnp.inf))
    selected = kept[best] & present & valid[best]
    return stack.mean_of(stack.zero_absent(updates, present), selected)

  return stateless(aggregate)


def monna(f: int, trusted: int = 0,
          num_clients: int | None = None) -> Aggregator:
  """MoNNA (Allouah et al., "Fixing by Mixing: A Recipe for Optimal
  Byzantine ML under Heterogeneity", AISTATS 2023; ByzFL's MoNNA): the mean
  of the n - f updates nearest the trusted client's, its own included.

  If the trusted slot is absent the first present client stands in; with
  n <= f the trusted update alone is returned.
  """
  _check_f('monna', f, num_clients, 'more than f',
           lambda clients: clients - 1)
  if not isinstance(trusted, int) or trusted < 0:
    raise ValueError(f'trusted (the slot of the server-trusted client) must '
                     f'be an integer >= 0, got {trusted!r}')
  if num_clients is not None and trusted >= num_clients:
    raise ValueError(f'trusted={trusted} is not a client slot: with '
                     f'{num_clients} clients it must be in '
                     f'0..{num_clients - 1}')

  def aggregate(updates, weights):
    present = stack.present(weights)
    if trusted >= len(present):
      raise ValueError(f'trusted={trusted} is not a client slot: with '
                       f'{len(present)} clients it must be in '
                       f'0..{len(present) - 1}')
    updates = stack.zero_absent(updates, present)
    pivot = jnp.where(present[trusted], trusted, jnp.argmax(present))
    pivot_update = jax.tree.map(lambda u: u[pivot], updates)
    distances = stack.norms(stack.centered(updates, pivot_update))
    distances = jnp.where(present, distances, jnp.inf).at[pivot].set(-1)
    selected = ((_ranks(distances) < jnp.maximum(jnp.sum(present) - f, 1))
                & present)
    return stack.mean_of(updates, selected)

  return stateless(aggregate)


def _check_f(rule, f, num_clients, needs, largest_f):
  """Refuses an f that is no count, or too large for ``num_clients``;
  ``largest_f(clients)`` is the most f that many clients allow."""
  if not isinstance(f, int) or f < 0:
    raise ValueError(f'f (the number of Byzantine clients to tolerate) must '
                     f'be an integer >= 0, got {f!r}')
  if num_clients is None or f <= largest_f(num_clients):
    return
  advice = (f'use f <= {largest_f(num_clients)} or more clients per round'
            if largest_f(num_clients) >= 0 else 'use more clients per round')
  raise ValueError(f'{rule} needs {needs} clients: f={f} with {num_clients} '
                   f'clients; {advice}')


def _check_iterations(iterations):
  if not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f'iterations must be an integer >= 1, got '
                     f'{iterations!r}')


def _check_mda_subsets(num_clients, f, max_subsets):
  count = math.comb(num_clients, f)
  if count > max_subsets:
    raise ValueError(f'mda would enumerate C({num_clients}, {f}) = {count} '
                     f'subsets, more than max_subsets={max_subsets}; use a '
                     f'smaller f, fewer clients per round, or raise '
                     f'max_subsets')


@functools.cache
def _kept_subsets(num_slots, f):
  """bool[C-choose-f, C]: every (C - f)-subset of the slots, in
  lexicographic order."""
  subsets = list(itertools.combinations(range(num_slots), num_slots - f))
  kept = np.zeros((len(subsets), num_slots), bool)
  for row, subset in enumerate(subsets):
    kept[row, list(subset)] = True
  return kept


def _clipped_f(f, count):
  """f clipped to (count - 1) // 2, so a majority of the count remains."""
  return jnp.clip((count - 1) // 2, 0, f)



def _ranks(scores):
  """int[C]: each entry's position in ascending order (ties by index)."""
  return jnp.argsort(jnp.argsort(scores, stable=True), stable=True)


def _trimmed_leaf(leaf, present, trim):
  count = jnp.sum(present)
  ordered = jnp.sort(jnp.where(stack.rows(present, leaf), leaf, jnp.inf),
                     axis=0)
  rank = stack.rows(jnp.arange(len(present)), leaf)
  kept = (rank >= trim) & (rank < count - trim)
  total = jnp.sum(jnp.where(kept, ordered, 0), axis=0)
  return (total / jnp.maximum(count - 2 * trim, 1)).astype(leaf.dtype)


def _mean_nearest_median(leaf, mask, count):
  """Per coordinate, the mean of the ``count`` values among the ``mask``
  rows closest to their median (ties to the lower index; 0 if count = 0)."""
  gap = jnp.where(stack.rows(mask, leaf),
                  jnp.abs(leaf - stack.masked_median(leaf, mask)), jnp.inf)
  nearest = jnp.take_along_axis(leaf, jnp.argsort(gap, axis=0, stable=True),
                                axis=0)
  kept = stack.rows(jnp.arange(len(mask)) < count, leaf)
  total = jnp.sum(jnp.where(kept, nearest, 0), axis=0)
  return (total / jnp.maximum(count, 1)).astype(leaf.dtype)


def _krum_scores(distances, candidates, f):
  """Krum scores among the ``candidates``: the sum of squared distances to
  the k = n' - f - 2 nearest other candidates, k clipped to 1..n' - 1;
  +inf for non-candidates."""
  count = jnp.sum(candidates)
  neighbours = jnp.minimum(jnp.maximum(count - f - 2, 1), count - 1)
  others = candidates[None, :] & ~jnp.eye(len(candidates), dtype=bool)
  ordered = jnp.sort(jnp.where(others, distances, jnp.inf), axis=1)
  nearest = jnp.arange(len(candidates))[None, :] < neighbours
  scores = jnp.sum(jnp.where(nearest, ordered, 0), axis=1)
  return jnp.where(candidates, scores, jnp.inf)


def _anchored(updates, present):
  """(anchor, updates - anchor) over the present updates (stack.anchor);
  absent rows are zeroed first, so they hold -anchor and must get
  coefficient 0."""
  updates = stack.zero_absent(updates, present)
  center = stack.anchor(updates, present)
  return center, stack.centered(updates, center)


def _inner_products(updates, vector):
  """float32[C]: <u_i, vector> summed over leaves."""
  return sum(jax.tree.leaves(jax.tree.map(
      lambda u, v: jnp.dot(u.reshape(u.shape[0], -1).astype(jnp.float32),
                           v.reshape(-1).astype(jnp.float32),
                           precision=stack.HIGHEST), updates, vector)))


def _sq_distances_to(gram, coefficients):
  """||x_i - z||^2 for z = sum_j a_j x_j: G_ii - 2 (G a)_i + a^T G a."""
  projected = jnp.dot(gram, coefficients, precision=stack.HIGHEST)
  return jnp.maximum(jnp.diagonal(gram) - 2 * projected
                     + jnp.dot(coefficients, projected,
                               precision=stack.HIGHEST), 0)
