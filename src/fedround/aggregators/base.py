"""The Aggregator contract, shaped like an optax GradientTransformation.

``update(updates, state, params=None, *, weights, key=None,
context=RoundContext())``: ``updates`` is a pytree whose leaves have a
leading client axis [C, ...]; ``weights`` is float[C] (the example counts, 0
for a client that is absent: a padded slot or an excluded non-finite
update); ``context`` is what else the round knows (client ids, the round,
what clients sent besides their messages). A rule returns ``(aggregate,
state)`` with ``aggregate`` shaped like one client's update.

A pre-aggregator (clipping, NNM, bucketing) returns ``((updates', weights'),
state)`` with a possibly different client count (``num_outputs(C)``, static);
``chain(pre..., rule)`` composes them into one Aggregator.

``reads`` declares what a part needs (``Reads``): the message payloads it
can aggregate (real-valued stacks by default, rankings for FRL's vote) and
what clients must send besides (e.g. their Fisher diagonals). ``output``
says what the aggregate is (``Aggregate``): a delta for the server's
optimizer to step on, or the new global model itself, which the server
assigns (FRL sets the global scores exactly; params + (new - params) would
round them).

Rows of absent clients are zero (the round zeroes them). Factories that
must know the cohort size to check their parameters (Krum needs C > 2f + 2)
take ``num_clients``: the most clients that can be present where the part
sits in the chain, which fedround supplies from the config.
"""
from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

import jax

from fedround.client import ClientOutput
from fedround.messages import REAL_VALUED, Payload


class RoundContext(NamedTuple):
  """What a rule may read besides the stack and its weights; the round
  fills every field, a test or a caller only those the rule reads."""
  client_ids: jax.Array | None = None  # int32[C]: each slot's id, -1 absent
  round: jax.Array | None = None       # int32: rounds completed
  fisher: Any = None  # [C, ...] diagonal Fishers (ClientOutput.FISHER)


class Reads(NamedTuple):
  """What a part of a chain needs from the round."""
  payloads: frozenset[Payload] = REAL_VALUED  # the messages it aggregates
  outputs: frozenset[ClientOutput] = frozenset()  # sent besides, by clients


class Aggregate(enum.Enum):
  """What a rule's aggregate is, so which server update takes it."""
  DELTA = 'delta'  # a step: the server's optimizer steps on -aggregate
  MODEL = 'model'  # the new global model: the server assigns it


class Aggregator(NamedTuple):
  init: Callable[[Any], Any]
  update: Callable[..., tuple[Any, Any]]
  reads: Reads = Reads()
  output: Aggregate = Aggregate.DELTA


class PreAggregator(NamedTuple):
  init: Callable[[Any], Any]
  update: Callable[..., tuple[tuple[Any, jax.Array], Any]]
  num_outputs: Callable[[int], int] = lambda num_clients: num_clients
  reads: Reads = Reads()


def stateless(aggregate_fn: Callable[..., Any]) -> Aggregator:
  """An Aggregator from ``aggregate_fn(updates, weights) -> aggregate``."""

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key, context
    return aggregate_fn(updates, weights), state

  return Aggregator(init=lambda params: (), update=update)


def chain(*parts) -> Aggregator:
  """Composes pre-aggregators and one final rule, applied left to right."""
  if not parts or not isinstance(parts[-1], Aggregator):
    raise ValueError('chain(...) must end with an aggregation rule, got '
                     f'{[type(p).__name__ for p in parts]}')
  if not all(isinstance(p, PreAggregator) for p in parts[:-1]):
    raise ValueError('only pre-aggregators may come before the final rule in '
                     'chain(...)')
  if len(parts) == 1:
    return parts[0]

  def init(params):
    return tuple(p.init(params) for p in parts)

  def update(updates, state, params=None, *, weights, key,
             context=RoundContext()):
    keys = jax.random.split(key, len(parts))
    new_state = []
    for part, part_state, part_key in zip(parts[:-1], state, keys):
      (updates, weights), part_state = part.update(
          updates, part_state, params, weights=weights, key=part_key,
          context=context)
      new_state.append(part_state)
    aggregate, last_state = parts[-1].update(
        updates, state[-1], params, weights=weights, key=keys[-1],
        context=context)
    return aggregate, tuple(new_state) + (last_state,)

  reads = Reads(
      frozenset.intersection(*(part.reads.payloads for part in parts)),
      frozenset.union(*(part.reads.outputs for part in parts)))
  return Aggregator(init, update, reads, parts[-1].output)
