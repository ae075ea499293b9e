"""What a client does besides plain local training, and the state it keeps
across rounds (ALGORITHMS.md section 5), chosen by ``config.client.algorithm``.

A ``ClientAlgorithm`` is shaped like an optax transformation: pure hooks
over its state, no behaviour flags. Every client keeps a row of state (the
round gathers the cohort's rows of the per-client store by id and scatters
them back), which may hold its local optimizer's state (DiLoCo); the server
keeps one shared state it broadcasts to every client (a control variate, a
global momentum). During local training the algorithm turns each step's
gradient into the direction the optimizer steps along; afterwards it
finishes the client's row from the ``LocalTrace`` of the local run.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedround.registry import Registry

CLIENT_ALGORITHMS = Registry('client algorithm')


class LocalTrace(NamedTuple):
  """What a client's local run leaves for its algorithm to finish from."""
  mean_gradient: Any    # the mean raw gradient over its local iterates
  params: Any           # its last iterate, the trained model
  optimizer_state: Any  # its local optimizer's state at the end
  steps: jax.Array      # local steps taken


class ClientAlgorithm(NamedTuple):
  """The hooks local training and the round call; see the module doc.

  init_own(params, optimizer_state) -> one client's row of state (the
    store stacks N of them); ``optimizer_state`` is a fresh local
    optimizer state.
  init_shared(params) -> the server-side state.
  start(own, fresh_optimizer_state) -> the local optimizer state the
    client's run starts from.
  direction(grad, local, global_params, own, shared) -> the gradient the
    client's optimizer steps along.
  finish(own, trace: LocalTrace) -> the client's row after its training.
  update_shared(shared, own_before, own_after, usable, aggregate,
    step_scale, population) -> the server-side state for the next round;
    ``own_*`` are the cohort's rows [C, ...], ``usable`` bool[C], and
    ``step_scale`` = eta * K, the client learning rate times the local
    steps (each counted at its local schedule's multiplier), so that
    -aggregate / step_scale is the mean local direction.
  aggregator: how its paper combines the cohort, the run's rule when
    ``config.aggregator`` is left empty.
  """
  init_own: Callable
  init_shared: Callable
  start: Callable
  direction: Callable
  finish: Callable
  update_shared: Callable
  aggregator: str = 'weighted_mean'


def _none(params, optimizer_state=None):
  del params, optimizer_state
  return ()


def _fresh(own, optimizer_state):
  del own
  return optimizer_state


def _keep(own, trace):
  del trace
  return own


def _plain(grad, local, global_params, own, shared):
  del local, global_params, own, shared
  return grad


def _unchanged(shared, *args):
  del args
  return shared


def _check_unit(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 < value <= 1):
    raise ValueError(f'{name} must be in (0, 1] (1 = no momentum), got '
                     f'{value!r}')


def _zeros(params, optimizer_state=None):
  del optimizer_state
  return jax.tree.map(jnp.zeros_like, params)


def _control_update(c, own_before, own_after, usable, population):
  """c + (1/N) sum over the usable cohort of (c_i new - c_i old)."""
  def leaf(c, before, after):
    change = jnp.where(usable.reshape((-1,) + (1,) * (after.ndim - 1)),
                       after - before, 0)
    return c + jnp.sum(change, axis=0) / population
  return jax.tree.map(leaf, c, own_before, own_after)


def _global_direction(aggregate, step_scale):
  """(1/(eta K)) * mean_i (w - w_i): the mean local direction, from the
  aggregated delta."""
  return jax.tree.map(lambda a: -a / step_scale, aggregate)


def fedavg() -> ClientAlgorithm:
  """Plain local training (McMahan et al., AISTATS 2017)."""
  return ClientAlgorithm(_none, _none, _fresh, _plain, _keep, _unchanged)


def fedprox(mu: float = 0.01) -> ClientAlgorithm:
  """FedProx (Li et al., MLSys 2020): the local loss plus
  (mu/2) ||w - w_global||^2, whose gradient adds mu (w - w_global)."""
  if isinstance(mu, bool) or not isinstance(mu, (int, float)) or mu < 0:
    raise ValueError(f'mu (the proximal weight) must be a number '
                     f'>= 0, got {mu!r}')

  def direction(grad, local, global_params, own, shared):
    return jax.tree.map(lambda g, w, w0: g + mu * (w - w0), grad, local,
                        global_params)

  return ClientAlgorithm(_none, _none, _fresh, direction, _keep, _unchanged)


def fedavg_m(beta: float = 0.1) -> ClientAlgorithm:
  """FedAvg-M (Cheng et al., "Momentum Benefits Non-IID Federated Learning
  Simply and Provably", ICLR 2024): every local step moves along
  beta * grad + (1 - beta) g, where g = (1/(eta |S| K)) sum_i (w - w_i) is
  the last round's mean local direction, broadcast by the server (zero
  before the first round). beta = 1 is FedAvg. The server step stays
  w + lr * aggregate, which is the paper's w - gamma g with gamma =
  lr * eta * K. The paper averages the cohort uniformly (1/|S|), so its
  default rule is ``mean``."""
  _check_unit('beta', beta)

  def direction(grad, local, global_params, own, g):
    return jax.tree.map(lambda d, m: beta * d + (1 - beta) * m, grad, g)

  def update_shared(g, own_before, own_after, usable, aggregate, step_scale,
                    population):
    return _global_direction(aggregate, step_scale)

  return ClientAlgorithm(_none, _zeros, _fresh, direction, _keep,
                         update_shared, aggregator='mean')


class ScaffoldShared(NamedTuple):
  control: Any     # c, the server's control variate
  momentum: Any    # g, the last round's mean local direction (SCAFFOLD-M)


def scaffold_m(beta: float = 0.1) -> ClientAlgorithm:
  """SCAFFOLD-M (Cheng et al., ICLR 2024): every local step moves along
  beta (grad - c_i + c) + (1 - beta) g, with g as in ``fedavg_m``. After
  training, c_i = (1/K) sum_k grad at its local iterates, and the server
  sets c <- c + (1/N) sum_{i in S} (c_i new - c_i old). beta = 1 is
  SCAFFOLD. State: c and g on the server, c_i for all N clients (zero at
  the start). Both papers average the cohort's deltas uniformly (1/|S|),
  so the default rule is ``mean``."""
  _check_unit('beta', beta)

  def direction(grad, local, global_params, c_i, shared):
    return jax.tree.map(
        lambda d, ci, c, m: beta * (d - ci + c) + (1 - beta) * m, grad, c_i,
        shared.control, shared.momentum)

  def update_shared(shared, own_before, own_after, usable, aggregate,
                    step_scale, population):
    return ScaffoldShared(
        _control_update(shared.control, own_before, own_after, usable,
                        population),
        _global_direction(aggregate, step_scale) if beta < 1
        else shared.momentum)

  return ClientAlgorithm(
      _zeros, lambda params: ScaffoldShared(_zeros(params), _zeros(params)),
      _fresh, direction, lambda c_i, trace: trace.mean_gradient,
      update_shared, aggregator='mean')


def scaffold() -> ClientAlgorithm:
  """SCAFFOLD (Karimireddy et al., ICML 2020), with c_i the mean gradient
  over the local iterates: SCAFFOLD-M with beta = 1."""
  return scaffold_m(beta=1.0)


def diloco() -> ClientAlgorithm:
  """DiLoCo's inner loop (Douillard et al., "DiLoCo: Distributed
  Low-Communication Training of Language Models", 2023): the client's
  optimizer (AdamW in the paper: ``config.client.optimizer = 'adamw'``)
  keeps its state between the client's rounds. Pair it with the outer
  optimizer, SGD with Nesterov momentum (``config.server.optimizer``). The
  outer gradient is the workers' uniform mean (its Algorithm 1), so the
  default rule is ``mean``."""
  return ClientAlgorithm(
      lambda params, optimizer_state: optimizer_state, _none,
      lambda own, fresh: own, _plain,
      lambda own, trace: trace.optimizer_state, _unchanged, aggregator='mean')


def init_store(algorithm: ClientAlgorithm, params, population: int,
               optimizer: Callable[[Any], optax.GradientTransformation]):
  """Round 0's per-client store: every client's row of ``init_own``,
  stacked on a leading axis of the N clients (() when it keeps nothing)."""
  row = algorithm.init_own(params, optimizer(jnp.float32(1)).init(params))
  return jax.tree.map(
      lambda x: jnp.broadcast_to(x, (population,) + jnp.shape(x)), row)


CLIENT_ALGORITHMS.register('fedavg')(fedavg)
CLIENT_ALGORITHMS.register('fedprox')(fedprox)
CLIENT_ALGORITHMS.register('fedavg_m')(fedavg_m)
CLIENT_ALGORITHMS.register('scaffold_m')(scaffold_m)
CLIENT_ALGORITHMS.register('scaffold')(scaffold)
CLIENT_ALGORITHMS.register('diloco')(diloco)
