"""optax optimizers by name, for clients and for the server, the
learning-rate schedules over rounds, and the clients' within a round.

A spec such as ``'sgd(momentum=0.9)'`` picks the optimizer and its extra
arguments; the learning rate is a separate numeric config field, passed in
as an array each round (``ServerState.hparams``) so it can vary by replica.
Every factory therefore takes ``learning_rate`` as a traced float32 array.

The server optimizers (ALGORITHMS.md section 5) step on the pseudo-gradient
g = -aggregate: FedAvgM, FedAdam, FedYogi, FedAdagrad and DiLoCo's outer step.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedround.registry import Registry, parse_spec

OPTIMIZERS = Registry('optimizer')
for _name in ('adam', 'adamw', 'adagrad', 'yogi', 'rmsprop', 'lamb', 'lion',
              'nadam'):
  OPTIMIZERS.register(_name)(getattr(optax, _name))


def _check_decay(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 <= value < 1):
    raise ValueError(f'{name} must be a number in [0, 1), got {value!r}')


def _check_positive(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      value > 0):
    raise ValueError(f'{name} must be a number > 0, got {value!r}')


def _check_flag(name: str, value) -> None:
  if not isinstance(value, bool):
    raise ValueError(f'{name} must be True or False, got {value!r}')


def sgd(learning_rate, momentum: float | None = None, nesterov: bool = False,
        weight_decay: float = 0.0, accumulator_dtype: Any | None = None
        ) -> optax.GradientTransformation:
  """``optax.sgd``, with torch.optim.SGD's coupled weight decay: the
  gradient gets weight_decay * w before momentum (FRL's code trains its
  scores with 1e-4)."""
  if isinstance(weight_decay, bool) or not isinstance(
      weight_decay, (int, float)) or not weight_decay >= 0:
    raise ValueError(f'weight_decay must be a number >= 0, got '
                     f'{weight_decay!r}')
  step = optax.sgd(learning_rate, momentum, nesterov, accumulator_dtype)
  if not weight_decay:
    return step
  return optax.chain(optax.add_decayed_weights(weight_decay), step)


def fedavgm(learning_rate, momentum: float = 0.9, nesterov: bool = False
            ) -> optax.GradientTransformation:
  """FedAvgM (Hsu, Qi, Brown 2019, arXiv:1909.06335): SGD with momentum on
  the pseudo-gradient; momentum 0 at learning rate 1 is FedAvg."""
  _check_decay('momentum', momentum)
  _check_flag('nesterov', nesterov)
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def diloco(learning_rate, momentum: float = 0.9, nesterov: bool = True
           ) -> optax.GradientTransformation:
  """DiLoCo's outer step (Douillard et al. 2023, arXiv:2311.08105): SGD with
  Nesterov momentum 0.9 on the pseudo-gradient; the paper's outer learning
  rate is 0.7 (set config.server.learning_rate)."""
  _check_decay('momentum', momentum)
  _check_flag('nesterov', nesterov)
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


class AdaptiveServerState(NamedTuple):
  count: jax.Array   # int32 scalar: steps taken
  mu: Any            # m, the momentum of the pseudo-gradient
  nu: Any            # v, its second-moment statistic


def _adaptive_server(learning_rate, b1: float, eps: float,
                     bias_correction: bool,
                     second_moment: Callable[[Any, Any], Any],
                     b2: float | None) -> optax.GradientTransformation:
  """Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2:
  m = b1 m + (1 - b1) g, v = second_moment(v, g^2),
  x <- x - lr * m / (sqrt(v) + eps).

  m and v start at 0, as in the paper's official code
  (google-research/federated, optimization/docs/hyperparameters.md: Keras Adam,
  ``initial_accumulator_value=0.0`` for Adagrad and Yogi), not at
  v >= tau^2 (tau = eps) as Algorithm 2 states; eps > 0 keeps the first step
  finite.

  ``bias_correction`` divides m by 1 - b1^t and, when v is a moving average
  (``b2`` given), v by 1 - b2^t: optax's bias-corrected form.
  """
  _check_decay('b1', b1)
  _check_positive('eps', eps)
  _check_flag('bias_correction', bias_correction)

  def init(params):
    return AdaptiveServerState(count=jnp.zeros((), jnp.int32),
                               mu=optax.tree.zeros_like(params),
                               nu=optax.tree.zeros_like(params))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: second_moment(v, g * g), state.nu, updates)
    count = optax.safe_increment(state.count)
    mu_hat, nu_hat = mu, nu
    if bias_correction:
      mu_hat = optax.tree.bias_correction(mu, b1, count)
      if b2 is not None:
        nu_hat = optax.tree.bias_correction(nu, b2, count)
    direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat,
                             nu_hat)
    return direction, AdaptiveServerState(count=count, mu=mu, nu=nu)

  return optax.chain(optax.GradientTransformation(init, update),
                     optax.scale_by_learning_rate(learning_rate))


def fedadam(learning_rate, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3, bias_correction: bool = False
            ) -> optax.GradientTransformation:
  """FedAdam (Reddi et al., ICLR 2021): v = b2 v + (1 - b2) g^2. With
  ``bias_correction`` it equals optax.adam(learning_rate, b1, b2, eps)."""
  _check_decay('b2', b2)
  return _adaptive_server(learning_rate, b1, eps, bias_correction,
                          lambda v, g2: b2 * v + (1 - b2) * g2, b2)


def fedyogi(learning_rate, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3, bias_correction: bool = False
            ) -> optax.GradientTransformation:
  """FedYogi (Reddi et al., ICLR 2021): v = v - (1 - b2) g^2 sign(v - g^2).
  With ``bias_correction`` it equals optax.yogi(learning_rate, b1, b2, eps)
  except that optax starts m and v at 1e-6, not 0."""
  _check_decay('b2', b2)
  return _adaptive_server(
      learning_rate, b1, eps, bias_correction,
      lambda v, g2: v - (1 - b2) * g2 * jnp.sign(v - g2), b2)


def fedadagrad(learning_rate, b1: float = 0.9, eps: float = 1e-3,
               bias_correction: bool = False) -> optax.GradientTransformation:
  """FedAdagrad (Reddi et al., ICLR 2021): v = v + g^2, with momentum b1 on
  m as in Algorithm 2; the official code's Keras Adagrad is b1=0.0.

  v is a sum, so ``bias_correction`` corrects m only. optax.adagrad is a
  different form (no momentum, eps inside the sqrt, v starting at 0.1).
  """
  return _adaptive_server(learning_rate, b1, eps, bias_correction,
                          lambda v, g2: v + g2, None)


def build_optimizer(spec: str, field: str
                    ) -> Callable[..., optax.GradientTransformation]:
  """``spec`` -> factory learning_rate -> optax transformation; a bad spec
  fails here, not inside the traced round."""
  name, kwargs = parse_spec(spec, field)
  OPTIMIZERS.call(name, kwargs, field, learning_rate=1.0)
  return lambda learning_rate: OPTIMIZERS.call(name, kwargs, field,
                                               learning_rate=learning_rate)


SCHEDULES = Registry('schedule')


def _check_count(name: str, value, least: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < least:
    raise ValueError(f'{name} must be an integer >= {least}, got {value!r}')


def _check_final(final) -> None:
  if isinstance(final, bool) or not isinstance(final, (int, float)) or not (
      final >= 0):
    raise ValueError(f'final (the last multiplier) must be a number >= 0, '
                     f'got {final!r}')


def constant_schedule() -> optax.Schedule:
  """Multiplier 1 every round."""
  return optax.constant_schedule(1.0)


def cosine_schedule(rounds: int, final: float = 0.0) -> optax.Schedule:
  """Cosine decay from 1 at round 0 to ``final`` at round ``rounds``, then
  ``final`` (Loshchilov and Hutter, SGDR, ICLR 2017, without restarts)."""
  _check_count('rounds', rounds, 1)
  _check_final(final)
  return optax.cosine_decay_schedule(1.0, rounds, alpha=final)


def warmup_cosine_schedule(warmup: int, rounds: int, final: float = 0.0
                           ) -> optax.Schedule:
  """Linear from 0 at round 0 to 1 at round ``warmup``, then cosine decay to
  ``final`` at round ``rounds`` (warmup included), then ``final``."""
  _check_count('warmup', warmup, 0)
  _check_count('rounds (warmup included)', rounds, warmup + 1)
  _check_final(final)
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, rounds, final)


def step_schedule(every: int, factor: float = 0.1) -> optax.Schedule:
  """Multiplier factor ** (round // every)."""
  _check_count('every', every, 1)
  _check_positive('factor', factor)
  return optax.exponential_decay(1.0, every, factor, staircase=True)


def exponential_schedule(rate: float) -> optax.Schedule:
  """Multiplier rate ** round."""
  _check_positive('rate', rate)
  return optax.exponential_decay(1.0, 1, rate)


def build_schedule(spec: str, field: str
                   ) -> Callable[[jax.Array], jax.Array]:
  """``spec`` -> schedule round -> float32 multiplier of the learning rate.

  ``round`` is an int32 scalar, possibly traced: the rounds completed before
  this one (``ServerState.round``), so the first round uses schedule(0). The
  round's learning rate is the configured one times the multiplier; a bad
  spec fails here.
  """
  schedule = SCHEDULES.build(spec, field)
  return lambda round_: jnp.asarray(schedule(round_), jnp.float32)


LOCAL_SCHEDULES = Registry('local schedule')


def constant_local_schedule() -> Callable[[jax.Array, int], jax.Array]:
  """Multiplier 1 at every local step."""
  return lambda position, length: jnp.ones(jnp.shape(position), jnp.float32)


def cosine_local_schedule() -> Callable[[jax.Array, int], jax.Array]:
  """(1 + cos(pi e / E)) / 2 in local epoch e of E (step e of K under
  local_steps): torch's CosineAnnealingLR(T_max=E) stepped once an epoch
  from the round's learning rate, as FRL's code trains each client."""
  return lambda position, length: (
      1 + jnp.cos(jnp.pi * position.astype(jnp.float32) / length)) / 2


OPTIMIZERS.register('sgd')(sgd)
OPTIMIZERS.register('fedavgm')(fedavgm)
OPTIMIZERS.register('diloco')(diloco)
OPTIMIZERS.register('fedadam')(fedadam)
OPTIMIZERS.register('fedyogi')(fedyogi)
OPTIMIZERS.register('fedadagrad')(fedadagrad)
SCHEDULES.register('constant')(constant_schedule)
SCHEDULES.register('cosine')(cosine_schedule)
SCHEDULES.register('warmup_cosine')(warmup_cosine_schedule)
SCHEDULES.register('step')(step_schedule)
SCHEDULES.register('exponential')(exponential_schedule)
LOCAL_SCHEDULES.register('constant')(constant_local_schedule)
LOCAL_SCHEDULES.register('cosine')(cosine_local_schedule)
