"""The server's state and its update: how the aggregate becomes the model.

A ``ServerUpdate`` is the round's server stage: ``init(params,
learning_rate) -> state`` and ``update(aggregate, state, params,
learning_rate) -> (params, state, step)``, where ``step`` is the change of
the global model the aggregate asks for (what the round reports and the
client algorithms read). Which one runs follows from what the rule returns
(``Aggregator.output``):

- ``optimizer_step``: the aggregate is a delta; an optax optimizer steps
  on the pseudo-gradient -aggregate. With plain SGD at learning rate 1 the
  step is params + aggregate: FedAvg. Momentum or adaptive servers
  (FedAvgM, FedAdam, ...) are other optax optimizers on the same
  pseudo-gradient (Reddi et al., ICLR 2021).
- ``assign``: the aggregate is the new model itself (FRL's vote), taken as
  it is: params + (new - params) would round it.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

# Numeric config fields the round reads from ``ServerState.hparams`` rather
# than from its closure: runs that differ only in them (or in the seed) share
# one compiled round and can run as vmapped replicas.
TRACED_HPARAMS = {'client.learning_rate': 'client_learning_rate',
                  'server.learning_rate': 'server_learning_rate'}


@flax.struct.dataclass
class ServerState:
  round: jax.Array         # int32 scalar: rounds completed
  params: Any              # the global model
  opt_state: Any           # the server update's state (its optimizer's)
  agg_state: Any           # aggregator state (pre-aggregators and rule)
  shared: Any              # the client algorithm's server-side state
  participation: Any       # the participation model's state (e.g. Markov)
  key: jax.Array           # base PRNG key; round t uses fold_in(key, t)
  hparams: dict            # float32 scalars named in TRACED_HPARAMS


def init_server_state(params, *, server_update: ServerUpdate, aggregator,
                      key, client_learning_rate: float,
                      server_learning_rate: float,
                      participation_state=(), shared=()) -> ServerState:
  """Round 0: ``shared`` is the client algorithm's server-side state
  (init_shared;
  plain FedAvg keeps none). The per-client store is not part of it: the
  round takes and returns it separately."""
  hparams = {'client_learning_rate': jnp.float32(client_learning_rate),
             'server_learning_rate': jnp.float32(server_learning_rate)}
  state = ServerState(
      round=jnp.zeros((), jnp.int32), params=params,
      opt_state=server_update.init(params, hparams['server_learning_rate']),
      agg_state=aggregator.init(params), shared=shared,
      participation=participation_state, key=key, hparams=hparams)
  # A rule's init may reuse one array for several fields; the round donates
  # the state, and XLA refuses to donate one buffer twice.
  return jax.tree.map(jnp.array, state)


class ServerUpdate(NamedTuple):
  init: Callable    # (params, learning_rate) -> state
  update: Callable  # (aggregate, state, params, learning_rate)
                    #   -> (params, state, step)


def optimizer_step(optimizer: Callable[[Any], optax.GradientTransformation]
                   ) -> ServerUpdate:
  """``optimizer`` (a factory learning_rate -> optax) on -aggregate."""

  def update(aggregate, state, params, learning_rate):
    pseudo_gradient = jax.tree.map(lambda a: -a, aggregate)
    updates, state = optimizer(learning_rate).update(pseudo_gradient, state,
                                                     params)
    return optax.apply_updates(params, updates), state, aggregate

  return ServerUpdate(lambda params, learning_rate: optimizer(
      learning_rate).init(params), update)


def assign() -> ServerUpdate:
  """The aggregate is the new global model."""

  def update(aggregate, state, params, learning_rate):
    del learning_rate
    return aggregate, state, jax.tree.map(jnp.subtract, aggregate, params)

  return ServerUpdate(lambda params, learning_rate: (), update)
