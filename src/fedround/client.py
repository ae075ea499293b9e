"""Local training: K optax steps of batch size B over a client's own rows.

Two schedules:
- ``local_steps=K``: K minibatches of B examples drawn uniformly (with
  replacement) from the client's n valid examples.
- ``local_epochs=E``: E passes over the client's examples, each in a fresh
  keyed order (fedround.shuffle), ceil(n / B) batches per pass, the last
  one partial.
The cohort trains in vmap lanes, several clients one after another in a
lane (fedround.lanes), so that lanes idle only while the busiest finishes;
the fraction of lane-steps idle is the waste the round reports.

The optimizer is a factory ``learning_rate -> optax transformation`` and the
learning rate an array the round passes in, so runs that differ only in it
share one compiled round and can be vmapped as replicas.
"""
from __future__ import annotations

import enum
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedround import lanes as lane_packing
from fedround import shuffle
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
  present: jax.Array  # bool: it trains this round (an absent slot does not)


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
  train: Callable    # (Broadcast, ClientInput [C]) -> (ClientResult [C],
                     #   lane_steps int32[1]: the lane-steps computed)
  optimizer: Callable[[jax.Array], optax.GradientTransformation]
  num_steps: int     # K, the longest schedule any client can have
  algorithm: ClientAlgorithm


# Local epochs: iterations whose batches are drawn and gathered together
# (the keyed order vectorises over their L x CHUNK x B positions); the last
# chunk computes up to CHUNK - 1 iterations past the busiest lane, which
# write nothing (counted as idle). Local steps draw and gather the whole
# schedule (up to MAX_CHUNK steps, a divisor of K) at once.
CHUNK = 8
MAX_CHUNK = 64


class _Lanes(NamedTuple):
  """The vmap lanes' state: the run of each lane's current client."""
  params: Any          # its local model
  optimizer_state: Any
  loss_sum: jax.Array  # float32[L]
  grad_sum: Any        # its raw gradients summed
  own: Any             # its row of the per-client store


def check_schedule(batch_size: int, local_steps: int,
                   local_epochs: int) -> None:
  """One-line errors for a batch size or local schedule that cannot run."""
  if batch_size < 1:
    raise ConfigError(f'config.client.batch_size must be a positive integer, '
                      f'got {batch_size}')
  if (local_steps > 0) == (local_epochs > 0) or min(local_steps,
                                                    local_epochs) < 0:
    raise ConfigError(
        'config.client: set exactly one of local_steps (K > 0) or '
        f'local_epochs (E > 0); got local_steps={local_steps}, '
        f'local_epochs={local_epochs}')


def schedule_steps(n, *, batch_size: int, local_steps: int,
                   local_epochs: int):
  """The local steps of clients with ``n`` examples (int, NumPy or jax
  array): K, or E passes of ceil(n / B) batches."""
  if local_steps:
    return 0 * n + local_steps
  return local_epochs * ((n + batch_size - 1) // batch_size)


def _reads_mean_gradient(algorithm: ClientAlgorithm, own, params,
                         optimizer_state) -> bool:
  """Whether ``algorithm.finish`` uses the trace's mean gradient (one
  client's ``own``, ``params`` and ``optimizer_state`` give the shapes)."""
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        (params, own, params, optimizer_state))
  finish = lambda gradient, own, local, state: algorithm.finish(
      own, LocalTrace(gradient, local, state, jnp.int32(1)))
  jaxpr = jax.make_jaxpr(finish)(*shapes).jaxpr
  gradient = set(jaxpr.invars[:len(jax.tree.leaves(params))])
  read = {v for e in jaxpr.eqns for v in e.invars} | set(jaxpr.outvars)
  return bool(gradient & read)


def make_client(apply_fn, optimizer: Callable[[jax.Array],
                                               optax.GradientTransformation], *,
                batch_size: int, max_examples: int, local_steps: int = 0,
                local_epochs: int = 0, objective=cross_entropy,
                outputs: frozenset[ClientOutput] = frozenset(),
                algorithm: ClientAlgorithm | None = None,
                local_schedule=None, lanes: int | None = None) -> Client:
  """``objective(logits, labels, valid) -> scalar`` is the local loss;
  ``outputs`` names what each client also returns (CLIENT_OUTPUTS);
  ``algorithm`` changes each step's gradient and keeps state
  (fedround.client_algorithms; default plain FedAvg);
  ``local_schedule(position, length)`` multiplies the learning rate in
  local epoch ``position`` of ``local_epochs`` (step of ``local_steps``)
  (optimizers.LOCAL_SCHEDULES; default constant); ``lanes`` is how many
  vmap lanes ``train`` packs its clients into (default one per client)."""
  algorithm = algorithm or fedavg()
  local_schedule = local_schedule or constant_local_schedule()
  check_schedule(batch_size, local_steps, local_epochs)
  if lanes is not None and lanes < 1:
    raise ConfigError(f'config.client.lanes must be a positive integer (or 0 '
                      f'to choose), got {lanes}')
  steps_of = functools.partial(schedule_steps, batch_size=batch_size,
                               local_steps=local_steps,
                               local_epochs=local_epochs)
  num_steps = steps_of(max_examples)
  shuffle_rounds = shuffle.num_rounds(max_examples)
  # The learning-rate schedule runs over the K steps, or the E epochs.
  length = local_steps or local_epochs
  chunk_length = min(CHUNK, num_steps) if local_epochs else max(
      d for d in range(1, min(local_steps, MAX_CHUNK) + 1)
      if local_steps % d == 0)

  def schedule_keys(key, n):
    """What fixes a client's batches: its K x B draws, or each epoch's
    permutation keys [E, 2, rounds]."""
    if local_steps:
      return jax.random.randint(key, (local_steps, batch_size), 0,
                                n).astype(jnp.int32)
    return jax.vmap(lambda k: shuffle.round_keys(k, shuffle_rounds))(
        jax.random.split(key, local_epochs))

  def per_epoch(n):
    return (n + batch_size - 1) // batch_size


  def schedule_position(k, n):
    return k if local_steps else k // per_epoch(n)

  def key_row(k, n):
    """The row of a client's schedule keys that step ``k`` reads: its
    K x B draw's, or its epoch's permutation keys."""
    return jnp.minimum(schedule_position(k, n), length - 1)

  def batch(step_keys, n, k):
    """(idx int32[B], valid float32[B]): a client's local step ``k``, from
    its schedule keys' ``key_row``."""
    if local_steps:
      return step_keys, jnp.full(batch_size, k < local_steps, jnp.float32)
    position = (k % per_epoch(n)) * batch_size + jnp.arange(batch_size)
    valid = (position < n) & (k < steps_of(n))
    idx = shuffle.permute(jnp.minimum(position, n - 1), n, step_keys)
    return idx, valid.astype(jnp.float32)

  def batches(key, n):
    keys = schedule_keys(key, n)
    return jax.vmap(lambda k: batch(keys[key_row(k, n)], n, k))(
        jnp.arange(num_steps))

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

  def train(broadcast: Broadcast, clients: ClientInput):
    """Trains each of ``clients`` from the global model, with its row of
    state and the algorithm's server-side state, packed into lanes."""
    params, learning_rate, shared, data = broadcast
    num_clients = clients.id.shape[0]
    num_lanes = min(lanes or num_clients, num_clients)
    n = data.n[clients.id]
    steps = jnp.where(clients.present, steps_of(n), 0)
    keys = jax.vmap(schedule_keys)(clients.key, n)
    fresh = jax.vmap(lambda own: algorithm.start(
        own, optimizer(learning_rate).init(params)),
                     axis_size=num_clients)(clients.own)
    take = lambda tree, c: jax.tree.map(lambda a: a[c], tree)
    stack = lambda tree, count: jax.tree.map(
        lambda a: jnp.broadcast_to(a, (count,) + a.shape), tree)
    # The raw gradients are summed only for an algorithm that reads their
    # mean.
    keeps_gradients = _reads_mean_gradient(algorithm, take(clients.own, 0),
                                           params, take(fresh, 0))
    zero_gradients = (jax.tree.map(jnp.zeros_like, params)
                      if keeps_gradients else ())
    # Counters, indices and the rate start from n so that they share its
    # sharding (under shard_map a literal would be device-invariant while
    # the loop makes it vary).
    vary = 0 * n[0]
    learning_rate = learning_rate + vary

    def started(c):
      """Lanes starting clients ``c`` int32[L]: the global model."""
      return _Lanes(stack(params, num_lanes), take(fresh, c),
                    jnp.zeros(num_lanes, jnp.float32) + vary,
                    stack(zero_gradients, num_lanes), take(clients.own, c))

    def lane_step(p, s, x, y, valid, rate, own):
      return corrected_step(p, s, x, y, valid, rate, lambda g, local:
                            algorithm.direction(g, local, params, own,
                                                shared))

    def gathered(c, k):
      """(x, y, valid, rate), each [S, L, ...]: the batches of clients
      ``c`` at their local steps ``k`` (int32[S, L]), drawn and gathered at
      once (the keyed order is cheap only vectorised)."""
      both = lambda f: jax.vmap(jax.vmap(f))
      idx, valid = both(batch)(keys[c, key_row(k, n[c])], n[c], k)
      x, y = both(data.rows)(clients.id[c], idx)
      rate = learning_rate * local_schedule(schedule_position(k, n[c]),
                                            length)
      return x, y, valid, rate

    def stepped(run, x, y, valid, rate):
      """Every lane's local step on its batch."""
      p, s, loss, grads = jax.vmap(lane_step)(
          run.params, run.optimizer_state, x, y, valid, rate, run.own)
      if keeps_gradients:
        grads = jax.tree.map(jnp.add, run.grad_sum, grads)
      return _Lanes(p, s, run.loss_sum + loss,
                    grads if keeps_gradients else (), run.own)

    # Clients that take no step keep the global model and a fresh state.
    untrained = (stack(params, num_clients), fresh,
                 jnp.zeros(num_clients, jnp.float32) + vary,
                 stack(zero_gradients, num_clients))

    def packed():
      """(iterations, finished runs): the cohort packed into the lanes
      (fedround.lanes), each lane training its clients one after another;
      a lane that finishes a client stores its run and starts the next."""
      table, iterations = lane_packing.pack(steps, num_lanes)
      # Lane l runs client table[l, r] over its iterations
      # [ends[l, r] - its steps, ends[l, r]): known up front.
      lane_work = jnp.where(table < num_clients,
                            steps[jnp.minimum(table, num_clients - 1)], 0)
      ends = jnp.cumsum(lane_work, axis=1)
      client_at = lambda rank: jnp.minimum(
          jnp.take_along_axis(table, rank, axis=1), num_clients - 1)

      def locate(t):
        """(rank, local step), each [L, S], of every lane at iterations
        ``t`` int32[S]."""
        rank = jax.vmap(lambda e: jnp.searchsorted(e, t, side='right'))(ends)
        rank = jnp.minimum(rank, num_clients)  # past the end: no client
        begin = jnp.take_along_axis(ends - lane_work, rank, axis=1)
        return rank, t[None, :] - begin

      def chunk(carry):
        """``chunk_length`` iterations, their batches gathered at once."""
        t, run, done = carry
        rank, k = locate(t + jnp.arange(chunk_length))
        live = jnp.take_along_axis(table, rank, axis=1) < num_clients
        c = client_at(rank)
        finished = live & (k + 1 == steps[c])
        by_iteration = lambda a: a.T  # [L, S] -> [S, L]

        def iteration(carry, inputs):
          run, done = carry
          batch, ending, c, rank = inputs
          run = stepped(run, *batch)

          def hand_over(run, done):
            """Finished lanes store their client's run and start the
            next."""
            target = jnp.where(ending, c, num_clients)  # out of range: kept
            done = jax.tree.map(
                lambda d, v: d.at[target].set(v, mode='drop'), done,
                (run.params, run.optimizer_state, run.loss_sum,
                 run.grad_sum))
            following = client_at((rank + 1)[:, None])[:, 0]
            run = jax.tree.map(lambda new, old: jnp.where(
                ending.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
                               started(following), run)
            return run, done

          return jax.lax.cond(jnp.any(ending), hand_over,
                              lambda run, done: (run, done), run, done), None

        (run, done), _ = jax.lax.scan(
            iteration, (run, done),
            (gathered(by_iteration(c), by_iteration(k)),
             *map(by_iteration, (finished, c, rank))))
        return t + chunk_length, run, done

      first = client_at(jnp.zeros((num_lanes, 1), jnp.int32) + vary)[:, 0]
      computed, _, done = jax.lax.while_loop(
          lambda carry: carry[0] < iterations, chunk,
          (vary, started(first), untrained))
      return computed, done

    if local_steps and num_lanes == num_clients:
      # A lane per client and K steps each: nothing to hand over.
      c = jnp.broadcast_to(jnp.arange(num_clients) + vary,
                           (chunk_length, num_clients))

      def chunk(run, first):
        k = first + jnp.arange(chunk_length)[:, None] + 0 * c
        return jax.lax.scan(lambda run, inputs: (stepped(run, *inputs),
                                                 None),
                            run, gathered(c, k))

      run, _ = jax.lax.scan(chunk, started(c[0]),
                            jnp.arange(0, local_steps, chunk_length) + vary)
      keep = lambda new, old: jnp.where(clients.present.reshape(
          (-1,) + (1,) * (old.ndim - 1)), new, old)
      done = jax.tree.map(keep, (run.params, run.optimizer_state,
                                 run.loss_sum, run.grad_sum), untrained)
      computed = vary + local_steps
    else:
      computed, done = packed()
    local, optimizer_state, loss_sum, grad_sum = done

    def result(i, n, steps, own, local, optimizer_state, loss_sum,
               grad_sum):
      trace = LocalTrace(
          mean_gradient=jax.tree.map(lambda g: g / jnp.maximum(steps, 1),
                                     grad_sum),
          params=local, optimizer_state=optimizer_state, steps=steps)
      slots = jnp.arange(max_examples)
      return ClientResult(
          delta=jax.tree.map(jnp.subtract, local, params),
          num_examples=n,
          loss=loss_sum / jnp.maximum(steps, 1),
          steps=steps,
          scaled_steps=jnp.sum(local_schedule(jnp.arange(length), length))
          * (1 if local_steps else per_epoch(n)),
          extras={output.value: CLIENT_OUTPUTS[output](
              apply_fn, local, data.rows(i, slots)[0], slots < n)
                  for output in sorted(outputs, key=lambda o: o.value)},
          own=algorithm.finish(own, trace))

    results = jax.vmap(result)(clients.id, n, steps, clients.own, local,
                               optimizer_state, loss_sum, grad_sum)
    return results, (num_lanes * computed)[None]

  return Client(batches, step, train, optimizer, num_steps, algorithm)
