"""The server's state and its step: an optax optimizer on the pseudo-gradient.

With plain SGD at learning rate 1 the step is params + aggregate: FedAvg.
Momentum or adaptive servers (FedAvgM, FedAdam, ...) are other optax
optimizers on the same pseudo-gradient -aggregate (Reddi et al., ICLR 2021).
"""
from __future__ import annotations

from typing import Any

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
  opt_state: Any           # server optimizer state
  agg_state: Any           # aggregator state (pre-aggregators and rule)
  shared: Any              # the client algorithm's server-side state
  participation: Any       # the participation model's state (e.g. Markov)
  key: jax.Array           # base PRNG key; round t uses fold_in(key, t)
  hparams: dict            # float32 scalars named in TRACED_HPARAMS


def init_server_state(params, *, server_optimizer, aggregator, key,
                      client_learning_rate: float,
                      server_learning_rate: float,
                      participation_state=(), shared=()) -> ServerState:
  """Round 0: ``server_optimizer`` is a factory learning_rate -> optax;
  ``shared`` is the client algorithm's server-side state (init_shared;
  plain FedAvg keeps none). The per-client store is not part of it: the
  round takes and returns it separately."""
  hparams = {'client_learning_rate': jnp.float32(client_learning_rate),
             'server_learning_rate': jnp.float32(server_learning_rate)}
  state = ServerState(
      round=jnp.zeros((), jnp.int32), params=params,
      opt_state=server_optimizer(hparams['server_learning_rate']).init(params),
      agg_state=aggregator.init(params), shared=shared,
      participation=participation_state, key=key, hparams=hparams)
  # A rule's init may reuse one array for several fields; the round donates
  # the state, and XLA refuses to donate one buffer twice.
  return jax.tree.map(jnp.array, state)


def server_step(optimizer: optax.GradientTransformation, params, opt_state,
                aggregate):
  """Applies the aggregate through the server optimizer."""
  pseudo_gradient = jax.tree.map(lambda a: -a, aggregate)
  updates, opt_state = optimizer.update(pseudo_gradient, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
