"""The server's state and its step: an optax optimizer on the pseudo-gradient.

With plain SGD at learning rate 1 the step is params + aggregate: FedAvg.
Momentum or adaptive servers (FedAvgM, FedAdam, ...) are other optax
optimizers on the same pseudo-gradient -aggregate (Reddi et al., ICLR 2021).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class ServerState:
  round: jax.Array         # int32 scalar: rounds completed
  params: Any              # the global model
  opt_state: Any           # server optimizer state
  agg_state: Any           # aggregator state (pre-aggregators and rule)
  client_state: Any        # per-client state, leading axis of all N clients
  key: jax.Array           # base PRNG key; round t uses fold_in(key, t)


def server_step(optimizer: optax.GradientTransformation, params, opt_state,
                aggregate):
  """Applies the aggregate through the server optimizer."""
  pseudo_gradient = jax.tree.map(lambda a: -a, aggregate)
  updates, opt_state = optimizer.update(pseudo_gradient, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
