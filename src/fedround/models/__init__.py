"""Flax models by name. Each takes inputs [batch, ...] and returns logits."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedround.registry import ConfigError, Registry

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


class ShiftedConv(nn.Module):
  """A stride-1 SAME convolution computed as a sum of kh * kw shifted
  matmuls, with nn.Conv's parameters (kernel [kh, kw, in, out], bias).

  XLA's CPU backend runs convolution *gradients* 20-100x slower inside a loop
  body (jax-ml/jax#12868), and local training is a loop; matmuls do not hit
  that path. Equal to nn.Conv up to float rounding.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2),
                         ((kw - 1) // 2, kw // 2), (0, 0)))
    out = sum(padded[:, i:i + height, j:j + width, :] @ kernel[i, j]
              for i in range(kh) for j in range(kw))
    return out + bias


NORM_GROUPS = 4  # GroupNorm groups per conv layer of CNN(norm='group')


class CNN(nn.Module):
  """Small CNN: [3x3 conv, (norm,) ReLU, 2x2 average pool] per feature width, then a
  dense layer. Sized for 8x8 digits; works on any [H, W, C] images.

  ``conv``: 'native' (nn.Conv), 'shifted' (ShiftedConv, fast on CPU) or
  'auto' (shifted on CPU, native elsewhere). Parameters are the same either
  way, so checkpoints move between backends.

  ``norm='group'`` puts a GroupNorm (NORM_GROUPS groups) after each conv.
  Group norm rather than batch norm, whose running statistics break under
  non-IID clients (Hsieh et al., "The Non-IID Data Quagmire of
  Decentralized Machine Learning", ICML 2020); it has no state to aggregate.
  """
  num_classes: int
  features: Sequence[int] = (16, 32)
  dense: int = 64
  conv: str = 'auto'
  norm: str = 'none'

  @nn.compact
  def __call__(self, x):
    if x.ndim == 3:
      x = x[..., None]
    conv = self.conv
    if conv == 'auto':
      conv = 'shifted' if jax.default_backend() == 'cpu' else 'native'
    layer = {'native': nn.Conv, 'shifted': ShiftedConv}[conv]
    for i, width in enumerate(self.features):
      x = layer(width, (3, 3), name=f'conv{i}')(x)
      if self.norm == 'group':
        x = nn.GroupNorm(num_groups=min(NORM_GROUPS, width),
                         name=f'norm{i}')(x)
      x = nn.relu(x)
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
        dense: int = 64, conv: str = 'auto', norm: str = 'none') -> nn.Module:
  if conv not in ('auto', 'native', 'shifted'):
    raise ConfigError(f"config.model: cnn conv must be 'auto', 'native' or "
                      f"'shifted', got {conv!r}")
  if norm not in ('none', 'group'):
    raise ConfigError(f"config.model: cnn norm must be 'none' or 'group', "
                      f"got {norm!r}")
  return CNN(num_classes, tuple(features), dense, conv, norm)


def negative_log_likelihood(logits, labels):
  """Per-example cross-entropy of integer labels."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def cross_entropy(logits, labels, weights):
  """Mean cross-entropy over examples with weight 1 (padding has weight 0)."""
  nll = negative_log_likelihood(logits, labels)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
