"""Finite but huge updates never make a rule return NaN: honest rows plus f
rows of norm 1e19, 1e30 and 3e38 (squares of float32 overflow from 1.8e19 on)
give every registered rule on real-valued updates (taken from the registry,
so a new rule is checked without editing this file) a finite aggregate,
within each robust rule's bound of the honest mean."""
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedround.aggregators import AGGREGATORS, build_aggregator
from fedround.aggregators.base import PreAggregator, RoundContext
from fedround.data import ClientData, uniform
from fedround.client import ClientOutput
from fedround.messages import Payload

CLIENTS, F = 12, 2
HONEST = CLIENTS - F

# rule spec -> how far (in honest radii R) its aggregate may land from the
# honest mean. Every registered rule is also checked for finiteness alone
# (REGISTERED): the mean, the weighted family and model merging have no
# robustness bound.
ROBUST = {
    'median': 2, f'trimmed_mean(f={F})': 2, f'meamed(f={F})': 2,
    f'krum(f={F})': 1, f'multi_krum(f={F})': 1,
    f'bulyan(f={F})': 2, f'mda(f={F})': 1, f'monna(f={F})': 1,
    f'clip(max_norm=2) | median': 2, f'nnm(f={F}) | krum(f={F})': 1,
    'bucketing(size=2) | median': 2, f'arc(f={F}) | median': 2,
    f'arc(f={F}) | mean': 2, 'clip(max_norm=2) | mean': 3,
    'flag_rescaled': 1,
}
# The hyper-parameters a registered part must be given here.
REQUIRED = {'f': F, 'size': 2, 'max_norm': 2}
# fedround's own rules (tests may register more, e.g. test_divergence's).
LIBRARY = [name for name in AGGREGATORS.names() if AGGREGATORS.get(
    name, 'aggregator').__module__.startswith('fedround.')]
# Rules with bounds of their own: smoothed Weiszfeld starts from the mean,
# as RFA's official code does, and each step shrinks the distance to the
# honest cluster by about f / (n - f) or better, so after its 8 steps an
# outlier still pulls it by ~1e-6 of the plain mean's error; centered
# clipping starts from its state (zero here) and moves at most tau per
# step; the Flag Aggregator averages unit-length updates (direction only,
# checked by its cosine with the honest mean).
SPECIAL = ('geometric_median', 'centered_clipping', 'flag')


def _stack(norm, seed=0):
  """Honest rows mu + 0.1 noise in two leaves, then F rows of ``norm``."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=40).astype(np.float32)
  mean /= np.linalg.norm(mean)
  honest = mean + 0.1 * rng.normal(size=(HONEST, 40)).astype(np.float32)
  directions = rng.normal(size=(F, 40))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  byzantine = (directions * norm).astype(np.float32)
  assert np.isfinite(byzantine).all()
  flat = np.concatenate([honest, byzantine])
  updates = {'a': jnp.asarray(flat[:, :30]),
             'b': jnp.asarray(flat[:, 30:].reshape(CLIENTS, 2, 5))}
  return updates, honest, jnp.ones(CLIENTS, jnp.float32)


def _apply(params, x):
  """A 3-class linear model of the stack's leaves, for the rules that
  score merged models (FedLAW's proxy loss, FedCE's validation accuracy)."""
  a = params['a']
  return jnp.stack([x @ a[:10], x @ a[10:20], x @ a[20:30]], -1) + (
      params['b'].reshape(-1)[:3])


def _context():
  """What the round tells a rule: its model, a proxy set, validation splits
  and the participation model."""
  rng = np.random.default_rng(1)
  x = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  y = lambda *shape: jnp.asarray(rng.integers(0, 3, shape), jnp.int32)
  return dict(population=CLIENTS, apply_fn=_apply, proxy=(x(16, 10), y(16)),
              validation=ClientData.from_padded(
                  x(CLIENTS, 4, 10), y(CLIENTS, 4),
                  np.full(CLIENTS, 4, np.int32)),
              participation=uniform(CLIENTS, CLIENTS))


@functools.cache
def _jitted(spec):
  """The rule's update from its initial state in round 1 (FedLD's round 0
  is the plain mean), jitted once per spec."""
  rule = build_aggregator(spec, 'aggregator', num_clients=CLIENTS,
                          **_context())

  def aggregate(updates, weights):
    params = jax.tree.map(lambda u: jnp.zeros(u.shape[1:], u.dtype), updates)
    fisher = (jax.tree.map(jnp.ones_like, updates)
              if ClientOutput.FISHER in rule.reads.outputs else None)
    return rule.update(updates, rule.init(params), params, weights=weights,
                       key=jax.random.PRNGKey(0),
                       context=RoundContext(client_ids=jnp.arange(CLIENTS),
                                            round=jnp.int32(1),
                                            fisher=fisher))[0]
  return jax.jit(aggregate)


def registered_spec(name):
  """``name`` with the REQUIRED hyper-parameters it takes; a pre-aggregator
  feeds the mean."""
  factory = AGGREGATORS.get(name, 'aggregator')
  given = {p: REQUIRED[p] for p, parameter in inspect.signature(
      factory).parameters.items()
           if p in REQUIRED and parameter.default is parameter.empty}
  spec = name + (f'({", ".join(f"{p}={v}" for p, v in given.items())})'
                 if given else '')
  part = AGGREGATORS.call(name, given, 'aggregator', num_clients=CLIENTS,
                          **_context())
  return f'{spec} | mean' if isinstance(part, PreAggregator) else spec


def _aggregate(spec, updates, weights):
  aggregate = _jitted(spec)(updates, weights)
  return np.concatenate([np.asarray(aggregate['a']).ravel(),
                         np.asarray(aggregate['b']).ravel()])


@pytest.mark.parametrize('norm', [1e19, 1e30, 3e38])
@pytest.mark.parametrize('spec', list(ROBUST) + list(SPECIAL))
def test_huge_finite_updates_give_a_finite_bounded_aggregate(spec, norm):
  updates, honest, weights = _stack(norm)
  aggregate = _aggregate(spec, updates, weights)
  assert np.isfinite(aggregate).all(), (spec, norm)
  aggregate = aggregate.astype(np.float64)
  mean = honest.mean(0).astype(np.float64)
  radius = np.linalg.norm(honest - mean, axis=1).max()
  if spec == 'geometric_median':
    plain_error = np.linalg.norm(_aggregate('mean', updates, weights).astype(
        np.float64) - mean)
    assert np.linalg.norm(aggregate - mean) <= radius + 1e-5 * plain_error
  elif spec == 'flag':
    cosine = aggregate @ mean / np.linalg.norm(aggregate) / np.linalg.norm(mean)
    assert cosine > 0.9, cosine
  elif spec == 'centered_clipping':
    # From v0 = 0 three steps of at most tau = 1 each, towards the honest.
    assert np.linalg.norm(aggregate - mean) <= np.linalg.norm(mean) + radius
  else:
    assert np.linalg.norm(aggregate - mean) <= ROBUST[spec] * radius, (
        spec, norm, np.linalg.norm(aggregate - mean), radius)


@pytest.mark.parametrize('norm', [1e19, 1e30, 3e38])
@pytest.mark.parametrize('name', LIBRARY)
def test_every_registered_rule_gives_a_finite_aggregate(name, norm):
  """Every rule on real-valued updates; the others read no real numbers."""
  spec = registered_spec(name)
  rule = build_aggregator(spec, 'aggregator', num_clients=CLIENTS,
                          **_context())
  if Payload.REAL not in rule.reads.payloads:
    assert name == 'frl_vote', name  # rankings
    return
  updates, _, weights = _stack(norm)
  assert np.isfinite(_aggregate(spec, updates, weights)).all(), (spec, norm)


def test_every_robust_rule_and_pre_aggregator_is_covered():
  """Each has a bound above; the means are checked for finiteness alone."""
  covered = {spec.split('|')[-1].split('(')[0].strip() for spec in ROBUST}
  covered |= {part.split('(')[0].strip() for spec in ROBUST
              for part in spec.split('|')}
  covered |= set(SPECIAL)
  robust_family = {'median', 'trimmed_mean', 'meamed', 'krum', 'multi_krum',
                   'geometric_median', 'centered_clipping', 'bulyan', 'mda',
                   'monna', 'flag', 'flag_rescaled', 'clip', 'nnm',
                   'bucketing', 'arc'}
  assert robust_family <= covered
  assert robust_family | {'mean', 'weighted_mean'} <= set(LIBRARY)


def test_ordinary_stacks_give_the_same_distances_as_before():
  """Dividing by a power of two is exact: Krum on a normal stack picks what
  the unscaled squared distances pick."""
  updates, _, weights = _stack(3.0)
  flat = np.concatenate([np.asarray(updates['a']), np.asarray(
      updates['b']).reshape(CLIENTS, -1)], axis=1).astype(np.float64)
  distances = ((flat[:, None] - flat[None]) ** 2).sum(-1)
  scores = np.sort(distances, axis=1)[:, 1:CLIENTS - F - 1].sum(1)
  np.testing.assert_allclose(_aggregate(f'krum(f={F})', updates, weights),
                             flat[np.argmin(scores)], rtol=1e-6)
