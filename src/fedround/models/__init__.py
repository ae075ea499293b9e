"""Flax models by name. Each takes inputs [batch, ...] and returns logits."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedround.models.convolution import IMPLEMENTATIONS, ShiftedConv, resolve
from fedround.models.reference import (EmnistCNN, LSTMClassifier,
                                       LSTMLanguageModel,
                                       ResNet18GN, TransformerLM)
from fedround.models.supermask import SupermaskCNN, SupermaskMLP
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
    layer = {'native': nn.Conv, 'shifted': ShiftedConv}[resolve(self.conv)]
    for i, width in enumerate(self.features):
      x = layer(width, (3, 3), name=f'conv{i}')(x)
      if self.norm == 'group':
        x = nn.GroupNorm(num_groups=min(NORM_GROUPS, width),
                         name=f'norm{i}')(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


def logistic(num_classes: int) -> nn.Module:
  return Logistic(num_classes)


def mlp(num_classes: int, hidden: Sequence[int] = (200, 200)) -> nn.Module:
  return MLP(num_classes, tuple(hidden))


def cnn(num_classes: int, features: Sequence[int] = (16, 32),
        dense: int = 64, conv: str = 'auto', norm: str = 'none') -> nn.Module:
  if conv not in ('auto', 'native', 'shifted'):
    raise ConfigError(f"config.model: cnn conv must be 'auto', 'native' or "
                      f"'shifted', got {conv!r}")
  if norm not in ('none', 'group'):
    raise ConfigError(f"config.model: cnn norm must be 'none' or 'group', "
                      f"got {norm!r}")
  return CNN(num_classes, tuple(features), dense, conv, norm)


def _check_conv(conv) -> None:
  if conv not in IMPLEMENTATIONS:
    raise ValueError(f'conv must be one of {", ".join(IMPLEMENTATIONS)}, '
                     f'got {conv!r}')


def _check_positive(**sizes) -> None:
  for name, value in sizes.items():
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool)
                             and v > 0 for v in values):
      raise ValueError(f'{name} must be a positive integer (or a tuple of '
                       f'them), got {value!r}')


def emnist_cnn(num_classes: int, conv: str = 'auto') -> nn.Module:
  """FedJAX's / Reddi et al.'s EMNIST CNN (models.reference)."""
  _check_conv(conv)
  return EmnistCNN(num_classes, conv)


def resnet18_gn(num_classes: int, width: int = 64, groups: int = 2,
                conv: str = 'auto') -> nn.Module:
  """TFF's ResNet-18 with group norm (models.reference)."""
  _check_conv(conv)
  _check_positive(width=width, groups=groups)
  if width % groups:
    raise ValueError(f'groups ({groups}) must divide width ({width})')
  return ResNet18GN(num_classes, width, groups, conv)


def lstm_lm(num_classes: int, embed: int = 8,
            hidden: Sequence[int] = (256, 256),
            projection: int = 0) -> nn.Module:
  """The LSTM next-token model (models.reference); Shakespeare: the
  defaults; Stack Overflow: embed=96, hidden=(670,), projection=96."""
  _check_positive(embed=embed, hidden=tuple(hidden))
  if not isinstance(projection, int) or projection < 0:
    raise ValueError(f'projection must be an integer >= 0, got '
                     f'{projection!r}')
  return LSTMLanguageModel(num_classes, embed, tuple(hidden), projection)


def lstm_classifier(num_classes: int, vocabulary: int = 0, embed: int = 8,
                    hidden: Sequence[int] = (256, 256),
                    dense: int = 0) -> nn.Module:
  """LEAF's stacked LSTM classifier (models.reference); Shakespeare: the
  defaults (``vocabulary`` 0: the classes are the input ids, LEAF's 80
  letters); Sent140: vocabulary=400_001, embed=100, hidden=(100, 100),
  dense=128."""
  _check_positive(embed=embed, hidden=tuple(hidden))
  for name, value in (('vocabulary', vocabulary), ('dense', dense)):
    if not isinstance(value, int) or value < 0:
      raise ValueError(f'{name} must be an integer >= 0, got {value!r}')
  return LSTMClassifier(num_classes, vocabulary or num_classes, embed,
                        tuple(hidden), dense)


def transformer_lm(num_classes: int, width: int = 128, depth: int = 2,
                   heads: int = 4, mlp: int = 512,
                   max_length: int = 128) -> nn.Module:
  """A small decoder-only transformer (models.reference)."""
  _check_positive(width=width, depth=depth, heads=heads, mlp=mlp,
                  max_length=max_length)
  if width % heads:
    raise ValueError(f'heads ({heads}) must divide width ({width})')
  return TransformerLM(num_classes, width, depth, heads, mlp, max_length)


def _check_keep_fraction(k) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
    raise ValueError(f'k (the fraction of edges each layer keeps) must be '
                     f'in (0, 1], got {k!r}')


def supermask_mlp(num_classes: int, hidden: Sequence[int] = (200, 200),
                  k: float = 0.5, seed: int = 0) -> nn.Module:
  """FRL's supermask MLP (models.supermask); ``seed`` draws its frozen
  weights, config.seed its initial scores."""
  _check_keep_fraction(k)
  return SupermaskMLP(num_classes, tuple(hidden), k, seed)


def supermask_cnn(num_classes: int, features: Sequence[int] = (32, 64),
                  dense: int = 128, k: float = 0.5, seed: int = 0,
                  conv: str = 'auto') -> nn.Module:
  """FRL's supermask LeNet (models.supermask)."""
  _check_keep_fraction(k)
  _check_conv(conv)
  return SupermaskCNN(num_classes, tuple(features), dense, k, seed, conv)


def negative_log_likelihood(logits, labels):
  """Per-example cross-entropy of integer labels."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def cross_entropy(logits, labels, weights):
  """Mean cross-entropy over examples with weight 1 (padding has weight 0)."""
  nll = negative_log_likelihood(logits, labels)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


MODELS.register('logistic')(logistic)
MODELS.register('mlp')(mlp)
MODELS.register('cnn')(cnn)
MODELS.register('supermask_mlp')(supermask_mlp)
MODELS.register('supermask_cnn')(supermask_cnn)
MODELS.register('emnist_cnn')(emnist_cnn)
MODELS.register('resnet18_gn')(resnet18_gn)
MODELS.register('lstm_lm')(lstm_lm)
MODELS.register('lstm_classifier')(lstm_classifier)
MODELS.register('transformer_lm')(transformer_lm)
