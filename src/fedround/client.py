"""Local training: K optax steps of batch size B over a client's own rows.

Two schedules, both fixed-length so that clients ``vmap``:
- ``local_steps=K``: K minibatches of B examples drawn uniformly (with
  replacement) from the client's n valid examples.
- ``local_epochs=E``: E passes over a fresh shuffle of the client's examples,
  ceil(n / B) batches per pass, the last one partial. Under ``vmap`` clients
  with fewer batches idle until the cohort's largest client is done; that
  idle fraction is the padding waste the round reports.

The optimizer is a factory ``learning_rate -> optax transformation`` and the
learning rate an array the round passes in, so runs that differ only in it
share one compiled round and can be vmapped as replicas.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedround.client_algorithms import ClientAlgorithm, LocalTrace, fedavg
from fedround.data.federated import ClientData
from fedround.fisher import diagonal_fisher
from fedround.models import cross_entropy
from fedround.optimizers import constant_local_schedule
from fedround.registry import ConfigError


class Broadcast(NamedTuple):
  """What the server sends every client of the cohort."""
  params: Any               # the global model
  learning_rate: jax.Array  # this round's client learning rate
  shared: Any               # the client algorithm's server-side state
  data: ClientData          # the federation's training examples


class ClientInput(NamedTuple):
  """One client's own inputs; the cohort's are stacked on a leading axis."""
  id: jax.Array   # int32, its index in the federation
  key: jax.Array  # its PRNG key for this round
  own: Any        # its row of the per-client store


class ClientResult(NamedTuple):
  delta: Any              # local model minus the global model
  num_examples: jax.Array  # n_i, the FedAvg weight
  loss: jax.Array          # mean training loss over the local steps
  steps: jax.Array         # local steps actually taken
  scaled_steps: jax.Array  # their learning-rate multipliers summed (=
                           # steps under the constant local schedule)
  extras: dict             # what the aggregator needs besides the delta
  own: Any                 # the client's row of state after training


class ClientOutput(enum.Enum):
  """What a client can send besides its message; the round passes each to
  the rule as the RoundContext field of its value, stacked [C, ...]."""
  FISHER = 'fisher'  # the diagonal Fisher information of p(y|x)


# Each output computed at the client's trained model over all its examples:
# (apply_fn, params, x, valid) -> pytree.
CLIENT_OUTPUTS = {ClientOutput.FISHER: diagonal_fisher}


class Client(NamedTuple):
  """The pieces of local training, exposed so baselines can reuse them."""
  batches: Callable  # (key, n) -> (idx int32[K, B], valid float32[K, B])
  step: Callable     # (params, opt_state, x, y, valid, learning_rate)
                     #   -> (params, opt_state, loss); call it only on
                     #   batches with a valid example
  update: Callable   # (Broadcast, ClientInput) -> ClientResult; vmap it
                     #   over the ClientInput with in_axes=(None, 0)
  optimizer: Callable[[jax.Array], optax.GradientTransformation]
  num_steps: int     # K, the longest schedule any client can have
  algorithm: ClientAlgorithm


def make_client(apply_fn, optimizer: Callable[[jax.Array],
                                               optax.GradientTransformation], *,
                batch_size: int, max_examples: int, local_steps: int = 0,
                local_epochs: int = 0, objective=cross_entropy,
                outputs: frozenset[ClientOutput] = frozenset(),
                algorithm: ClientAlgorithm | None = None,
                local_schedule=None) -> Client:
  """``objective(logits, labels, valid) -> scalar`` is the local loss;
  ``outputs`` names what each client also returns (CLIENT_OUTPUTS);
  ``algorithm`` changes each step's gradient and keeps state
  (fedround.client_algorithms; default plain FedAvg);
  ``local_schedule(position, length)`` multiplies the learning rate in
  local epoch ``position`` of ``local_epochs`` (step of ``local_steps``)
  (optimizers.LOCAL_SCHEDULES; default constant)."""
  algorithm = algorithm or fedavg()
  local_schedule = local_schedule or constant_local_schedule()
  if batch_size < 1:
    raise ConfigError(f'config.client.batch_size must be a positive integer, '
                      f'got {batch_size}')
  if (local_steps > 0) == (local_epochs > 0) or min(local_steps,
                                                    local_epochs) < 0:
    raise ConfigError(
        'config.client: set exactly one of local_steps (K > 0) or '
        f'local_epochs (E > 0); got local_steps={local_steps}, '
        f'local_epochs={local_epochs}')
  batches_per_epoch = math.ceil(max_examples / batch_size)
  num_steps = local_steps or local_epochs * batches_per_epoch

  def batches(key, n):
    if local_steps:
      idx = jax.random.randint(key, (num_steps, batch_size), 0, n)
      return idx.astype(jnp.int32), jnp.ones((num_steps, batch_size))
    slots = jnp.arange(max_examples)
    shuffles = jax.vmap(lambda k: jnp.argsort(
        jnp.where(slots < n, jax.random.uniform(k, (max_examples,)), 2.0)))(
            jax.random.split(key, local_epochs))
    per_epoch = (n + batch_size - 1) // batch_size
    k = jnp.arange(num_steps)
    epoch = jnp.minimum(k // per_epoch, local_epochs - 1)
    position = (k % per_epoch)[:, None] * batch_size + jnp.arange(batch_size)
    valid = (position < n) & (k < local_epochs * per_epoch)[:, None]
    idx = shuffles[epoch[:, None], jnp.minimum(position, max_examples - 1)]
    return idx.astype(jnp.int32), valid.astype(jnp.float32)

  def loss_fn(params, x, y, valid):
    return objective(apply_fn(params, x), y, valid)

  def corrected_step(params, opt_state, x, y, valid, learning_rate,
                     direction):
    """One optax step along ``direction(grads, params)``; also returns
    the raw gradient."""
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, valid)
    updates, opt_state = optimizer(learning_rate).update(
        direction(grads, params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  def step(params, opt_state, x, y, valid, learning_rate):
    """One plain optax step on the valid examples of a batch."""
    return corrected_step(params, opt_state, x, y, valid, learning_rate,
                          lambda grads, params: grads)[:3]

  def update(broadcast: Broadcast, client: ClientInput) -> ClientResult:
    """Trains ``client`` from the global model, with its row of state and
    the algorithm's server-side state."""
    params, learning_rate, shared, data = broadcast
    own = client.own
    n = data.n[client.id]
    idx, valid = batches(client.key, n)
    if local_steps:  # gather the K * B rows this client will read at once
      x, y = data.rows(client.id, idx.reshape(-1))
      read = lambda k: jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(
          a, k * batch_size, batch_size), (x, y))
    else:  # epochs read every example: gather each step's batch
      read = lambda k: data.rows(client.id, idx[k])
    per_epoch = (n + batch_size - 1) // batch_size
    steps = local_steps or local_epochs * per_epoch
    # The local schedule runs over the K steps, or the E epochs of
    # per_epoch steps each.
    length = local_steps or local_epochs
    position = lambda k: k if local_steps else k // per_epoch

    slots = jnp.arange(max_examples)
    direction = lambda grads, local: algorithm.direction(
        grads, local, params, own, shared)

    def body(carry):
      k, p, s, loss_sum, grad_sum = carry
      rate = learning_rate * local_schedule(position(k), length)
      p, s, loss, grads = corrected_step(p, s, *read(k), valid[k], rate,
                                         direction)
      return (k + 1, p, s, loss_sum + loss,
              jax.tree.map(jnp.add, grad_sum, grads))

    # A while loop, not a scan: under vmap it runs to the cohort's longest
    # schedule rather than the federation's, so small cohorts idle less.
    # Counters start from n so that they share its sharding (under shard_map
    # a literal 0 would be device-invariant while the loop makes it vary).
    zero = jnp.zeros_like(n)
    optimizer_state = algorithm.start(own, optimizer(learning_rate).init(
        params))
    _, local, optimizer_state, loss_sum, grad_sum = jax.lax.while_loop(
        lambda carry: carry[0] < steps, body,
        (zero, params, optimizer_state, zero.astype(jnp.float32),
         jax.tree.map(jnp.zeros_like, params)))
    trace = LocalTrace(
        mean_gradient=jax.tree.map(lambda g: g / jnp.maximum(steps, 1),
                                   grad_sum),
        params=local, optimizer_state=optimizer_state, steps=steps)
    return ClientResult(
        delta=jax.tree.map(jnp.subtract, local, params),
        num_examples=n,
        loss=loss_sum / jnp.maximum(steps, 1),
        steps=steps,
        scaled_steps=jnp.sum(local_schedule(jnp.arange(length), length))
        * (1 if local_steps else per_epoch),
        extras={output.value: CLIENT_OUTPUTS[output](
            apply_fn, local, data.rows(client.id, slots)[0], slots < n)
                for output in sorted(outputs, key=lambda o: o.value)},
        own=algorithm.finish(own, trace))

  return Client(batches, step, update, optimizer, num_steps, algorithm)
