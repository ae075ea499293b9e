"""Flax models by name. Each takes inputs [batch, ...] and returns logits."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedround.registry import Registry

MODELS = Registry('model')


class Logistic(nn.Module):
  """Multinomial logistic regression (FedProx's Synthetic model)."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
  """Fully connected ReLU network."""
  num_classes: int
  hidden: Sequence[int] = (200, 200)

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """Small CNN: [3x3 conv, ReLU, 2x2 average pool] per feature width, then a
  dense layer. Sized for 8x8 digits; works on any [H, W, C] images."""
  num_classes: int
  features: Sequence[int] = (16, 32)
  dense: int = 64

  @nn.compact
  def __call__(self, x):
    if x.ndim == 3:
      x = x[..., None]
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


@MODELS.register('logistic')
def logistic(num_classes: int) -> nn.Module:
  return Logistic(num_classes)


@MODELS.register('mlp')
def mlp(num_classes: int, hidden: Sequence[int] = (200, 200)) -> nn.Module:
  return MLP(num_classes, tuple(hidden))


@MODELS.register('cnn')
def cnn(num_classes: int, features: Sequence[int] = (16, 32),
        dense: int = 64) -> nn.Module:
  return CNN(num_classes, tuple(features), dense)


def cross_entropy(logits, labels, weights):
  """Mean cross-entropy over examples with weight 1 (padding has weight 0)."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
