"""The two bounds a fedround round is measured against (and tested against).

- ``python_loop_round``: what FedJAX-style simulators do: a Python loop over
  the cohort and over local steps, each step a jitted call, batches gathered
  on the host, the average taken on the host in NumPy.
- ``make_centralised``: the floor: the same examples and the same number of
  steps as one batched training step on one model (the C clients' batches
  of step k concatenated into one batch of C * B).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedround.client import Client


def python_loop_round(client: Client, params, data, ids, keys, *,
                      client_learning_rate: float,
                      server_learning_rate: float = 1.0, step=None,
                      batches=None):
  """One FedAvg round as a per-client loop; returns the new global params.

  ``step`` and ``batches`` are the jitted ``client.step`` and
  ``client.batches``; pass them in to reuse their compilation across rounds.
  """
  step = step or jax.jit(client.step)
  batches = batches or jax.jit(client.batches)
  n = np.asarray(data.n)
  host_params = jax.device_get(params)
  summed, weight = None, 0.0
  for cid, key in zip(np.asarray(ids), keys):
    idx, valid = jax.device_get(batches(key, int(n[cid])))
    x, y = data.train.client(int(cid))
    idx = np.minimum(idx, n[cid] - 1)  # the slots past n are masked
    local, opt_state = params, client.optimizer(client_learning_rate).init(
        params)
    for k in range(client.num_steps):
      if not valid[k].any():
        break  # the rest of this client's schedule is padding
      local, opt_state, _ = step(local, opt_state, x[idx[k]], y[idx[k]],
                                 valid[k], client_learning_rate)
    delta = jax.tree.map(lambda a, b: np.asarray(a) - b,
                         jax.device_get(local), host_params)
    contribution = jax.tree.map(lambda d: n[cid] * d, delta)
    summed = contribution if summed is None else jax.tree.map(
        np.add, summed, contribution)
    weight += n[cid]
  return jax.tree.map(lambda p, s: p + server_learning_rate * s / weight,
                      host_params, summed)


def make_centralised(client: Client, learning_rate: float):
  """jit(params, data, ids, keys) -> params after the cohort's K steps taken
  as K steps of one model on the concatenated C * B examples.

  With ``local_epochs`` a merged batch past every client's schedule holds no
  valid example and gives a zero gradient (a no-op for SGD; the benchmark
  uses ``local_steps``, where every step is full)."""

  def centralised(params, data, ids, keys):
    idx, valid = jax.vmap(client.batches)(keys, data.n[ids])  # [C, K, B]
    x, y = jax.vmap(data.train.rows)(ids, idx)                 # [C, K, B, ...]
    merge = lambda a: jnp.swapaxes(a, 0, 1).reshape(
        (a.shape[1], -1) + a.shape[3:])                          # [K, C*B, ...]

    def body(carry, batch):
      p, s = carry
      p, s, _ = client.step(p, s, *batch, learning_rate)
      return (p, s), None

    (params, _), _ = jax.lax.scan(
        body, (params, client.optimizer(learning_rate).init(params)),
        (merge(x), merge(y), merge(valid)))
    return params

  return jax.jit(centralised)
