"""The Aggregator contract, shaped like an optax GradientTransformation.

``update(updates, state, params=None, *, weights, key, **extra)``: ``updates``
is a pytree whose leaves have a leading client axis [C, ...]; ``weights`` is
float[C] (the example counts, 0 for a client that is absent: a padded slot or
an excluded non-finite update). A rule returns ``(aggregate, state)`` with
``aggregate`` shaped like one client's update.

A pre-aggregator (clipping, NNM, bucketing) returns ``((updates', weights'),
state)`` with a possibly different client count (``num_outputs(C)``, static);
``chain(pre..., rule)`` composes them into one Aggregator.

``messages`` names the message kinds (fedround.messages) a part can read:
real-valued stacks by default, rankings for FRL's vote. A rule with
``sets_params`` returns the new global model itself rather than a step:
the round takes it as is, with no server optimizer (FRL assigns the
global scores exactly; params + (new - params) would round them).

Rows of absent clients are zero (the round zeroes them). Factories that
must know the cohort size to check their parameters (Krum needs C > 2f + 2)
take ``num_clients``: the most clients that can be present where the part
sits in the chain, which fedround supplies from the config.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from fedround.messages import REAL_VALUED


class Aggregator(NamedTuple):
  init: Callable[[Any], Any]
  update: Callable[..., tuple[Any, Any]]
  # What the rule needs clients to send besides deltas (e.g. 'fisher'); the
  # round passes each as a keyword of the same name, stacked [C, ...].
  needs: tuple[str, ...] = ()
  messages: tuple[str, ...] = REAL_VALUED
  sets_params: bool = False


class PreAggregator(NamedTuple):
  init: Callable[[Any], Any]
  update: Callable[..., tuple[tuple[Any, jax.Array], Any]]
  num_outputs: Callable[[int], int] = lambda num_clients: num_clients
  messages: tuple[str, ...] = REAL_VALUED


def stateless(aggregate_fn: Callable[..., Any]) -> Aggregator:
  """An Aggregator from ``aggregate_fn(updates, weights) -> aggregate``."""

  def update(updates, state, params=None, *, weights, key=None, **extra):
    del params, key, extra
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

  def update(updates, state, params=None, *, weights, key, **extra):
    keys = jax.random.split(key, len(parts))
    new_state = []
    for part, part_state, part_key in zip(parts[:-1], state, keys):
      (updates, weights), part_state = part.update(
          updates, part_state, params, weights=weights, key=part_key, **extra)
      new_state.append(part_state)
    aggregate, last_state = parts[-1].update(
        updates, state[-1], params, weights=weights, key=keys[-1], **extra)
    return aggregate, tuple(new_state) + (last_state,)

  needs = tuple(dict.fromkeys(
      name for part in parts for name in getattr(part, 'needs', ())))
  messages = tuple(kind for kind in parts[-1].messages
                   if all(kind in part.messages for part in parts))
  return Aggregator(init, update, needs, messages, parts[-1].sets_params)
