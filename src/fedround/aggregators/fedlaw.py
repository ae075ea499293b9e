"""FedLAW: learnable aggregation weights and global weight shrinking.

Li, Lin, Shao, Zhao, Tang, "Revisiting Weighted Aggregation in Federated
Learning with Neural Networks", ICML 2023; official code
github.com/ZexiLee/ICML-2023-FedLAW (server_funct.fedlaw_optimization).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, RoundContext

SERVER_EPOCHS = 20  # the official code's default server epochs per round


class FedLAWState(NamedTuple):
  gamma: jax.Array    # float32: last round's shrinking factor exp(g)
  lambdas: jax.Array  # float32[N]: last round's weight of each client, 0 if
                      # it was not aggregated


def fedlaw(steps: int | None = None, learning_rate: float = 0.01,
           b1: float = 0.5, b2: float = 0.999, batch_size: int = 128, *,
           population: int, apply_fn: Callable | None = None,
           proxy: tuple | None = None) -> Aggregator:
  """FedLAW (Li et al., ICML 2023): w <- gamma * sum_i lambda_i w_i over the
  full client models w_i = params + Delta_i, gamma = exp(g), lambda =
  softmax(l) over the usable clients (weight > 0).

  Each round starts from l_i = log(n_i / sum_j n_j), g = 0 and runs
  ``steps`` Adam steps (lr, b1, b2) on the cross-entropy of the merged model
  over the server proxy set in shuffled minibatches of ``batch_size`` (the
  whole set when it is no larger), as the official code does. ``steps=None``
  runs the official 20 epochs over the proxy set (40 steps for CIFAR-10's
  200 proxy examples); ``steps=0`` is FedAvg. gamma < 1 shrinks the global
  model ("global weight shrinking"). Nothing carries over between rounds;
  the state only records gamma and the lambdas (per client id) for logging.

  lambda_i = n_i exp(d_i) / sum_j n_j exp(d_j) with d = l - l(0) starting at
  0: the same Adam trajectory as on l, and exactly FedAvg's weights at
  d = 0. With no usable client the aggregate is zero and gamma is 1.
  The official code's default is this 'exp' form without SWA; it uses lr
  0.005 on data sets other than CIFAR-10.
  """
  if proxy is None:
    raise ValueError('fedlaw needs a server proxy set: set '
                     'config.data.proxy_fraction > 0 (the paper uses 2% of '
                     'the test split)')
  if apply_fn is None:
    raise ValueError('fedlaw needs the model (apply_fn) to compute the proxy '
                     'loss of the merged model')
  proxy_x, proxy_y = (jnp.asarray(a) for a in proxy)
  size = len(proxy_y)
  if size < 1 or len(proxy_x) != size:
    raise ValueError(f'the proxy set must hold >= 1 example with as many '
                     f'inputs as labels, got {len(proxy_x)} inputs and '
                     f'{size} labels')
  if not (isinstance(batch_size, int) and batch_size >= 1):
    raise ValueError(f'batch_size (proxy examples per Adam step) must be an '
                     f'integer >= 1, got {batch_size!r}')
  batch = min(batch_size, size)
  batches_per_epoch = math.ceil(size / batch)
  if steps is None:
    steps = SERVER_EPOCHS * batches_per_epoch
  if not (isinstance(steps, int) and steps >= 0):
    raise ValueError(f'steps (Adam steps per round on the proxy set) must be '
                     f'an integer >= 0 or None for 20 proxy epochs, got '
                     f'{steps!r}')
  if not learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {learning_rate!r}')
  for name, beta in (('b1', b1), ('b2', b2)):
    if not 0 <= beta < 1:
      raise ValueError(f'{name} (an Adam decay rate) must be in [0, 1), '
                       f'got {beta!r}')
  if not (isinstance(population, int) and population >= 1):
    raise ValueError(f'population (clients in the federation) must be an '
                     f'integer >= 1, got {population!r}')
  optimizer = optax.adam(learning_rate, b1=b1, b2=b2)
  # Each epoch is a permutation padded with -1 to whole batches.
  padding = -np.ones(batches_per_epoch * batch - size, np.int32)

  def minibatch(key, step):
    if batches_per_epoch == 1:
      return proxy_x, proxy_y, jnp.ones(size, bool)
    epoch, position = jnp.divmod(step, batches_per_epoch)
    order = jnp.concatenate([
        jax.random.permutation(jax.random.fold_in(key, epoch), size),
        padding])
    rows = jax.lax.dynamic_slice(order, (position * batch,), (batch,))
    taken = jnp.maximum(rows, 0)
    return proxy_x[taken], proxy_y[taken], rows >= 0

  def init(params):
    del params
    return FedLAWState(gamma=jnp.ones((), jnp.float32),
                       lambdas=jnp.zeros(population, jnp.float32))

  def update(updates, state, params=None, *, weights, key,
             context=RoundContext()):
    del state
    client_ids = context.client_ids
    if params is None:
      raise ValueError('fedlaw merges full client models: update() needs '
                       'params')
    if batches_per_epoch > 1 and key is None:
      raise ValueError('fedlaw draws proxy minibatches: update() needs a key')
    usable = stack.present(weights)
    updates = stack.zero_absent(updates, usable)
    sizes = jnp.where(usable, weights, 0)

    def mixture(offsets):  # lambda from d = l - log(n_i / sum n)
      scaled = sizes * jnp.exp(offsets - jax.lax.stop_gradient(
          jnp.max(offsets)))
      total = jnp.sum(scaled)
      return scaled * jnp.where(total > 0,
                                1 / jnp.where(total > 0, total, 1), 0)

    def aggregate(offsets, log_gamma):
      """merged - params = gamma sum_i lambda_i Delta_i + (gamma - 1) params
      (sum_i lambda_i = 1), exact at gamma = 1."""
      gamma = jnp.exp(log_gamma)
      mixed = stack.combine(updates, mixture(offsets))
      return jax.tree.map(lambda m, p: (gamma * m + (gamma - 1) * p)
                          .astype(p.dtype), mixed, params)

    def loss(variables, x, y, valid):
      step = aggregate(*variables)
      merged = jax.tree.map(jnp.add, params, step)
      losses = optax.softmax_cross_entropy_with_integer_labels(
          apply_fn(merged, x), y)
      return jnp.sum(jnp.where(valid, losses, 0)) / jnp.sum(valid)

    def adam_step(step, carry):
      variables, opt_state = carry
      grads = jax.grad(loss)(variables, *minibatch(key, step))
      changes, opt_state = optimizer.update(grads, opt_state, variables)
      return optax.apply_updates(variables, changes), opt_state

    variables = (jnp.zeros(weights.shape, jnp.float32),
                 jnp.zeros((), jnp.float32))
    variables, _ = jax.lax.fori_loop(
        0, steps, adam_step, (variables, optimizer.init(variables)))
    anyone = jnp.any(usable)
    step = jax.tree.map(lambda s: jnp.where(anyone, s, 0),
                        aggregate(*variables))
    slots = jnp.where(usable & (client_ids >= 0), client_ids, population)
    lambdas = jnp.zeros(population, jnp.float32).at[slots].set(
        mixture(variables[0]), mode='drop')
    gamma = jnp.where(anyone, jnp.exp(variables[1]), 1.0)
    return step, FedLAWState(gamma=gamma, lambdas=lambdas)

  return Aggregator(init, update)
