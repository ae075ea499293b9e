"""Supermask networks for FRL (Mozaffari et al., "Every Vote Counts:
Ranking-Based Training of Federated Learning to Resist Poisoning Attacks",
USENIX Security 2023, on arXiv as "FRL: Federated Rank Learning"; code
SPIN-UMass/FRL, models/).

Every dense and conv layer has frozen random signed-constant weights
+-sqrt(2 / fan_in) (FRL's ``signed_constant`` init: fan_in mode, ReLU gain)
and trains only its edges' ``scores``, drawn U(-1/sqrt(fan_in),
1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))``, FRL's ``mask_init``). The
forward pass keeps the top k fraction of edges by |score| (edge-popup:
Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
CVPR 2020; FRL's ``MaskConv`` masks by ``scores.abs()``) and the gradient
passes the mask as if it were the identity (straight-through), then |.|,
so d loss / d score = d loss / d masked weight * weight * sign(score).
No biases, as in FRL.

The frozen weights are not parameters: each layer regenerates them from
the model's ``seed`` and its own index, so the params are exactly the
scores, ``model.apply({'params': scores}, x)`` works everywhere, and FRL's
vote leaves the global params a permutation of their initial values.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedround.models.convolution import native_conv, resolve, shifted_conv


def top_k_mask(importance: jax.Array, k: float) -> jax.Array:
  """1 on the edges of the top k fraction of ``importance``, 0 elsewhere:
  the int((1 - k) n) least important are dropped (FRL's ``GetSubnet``);
  among equals the lower flat index is dropped first (a stable sort)."""
  flat = importance.reshape(-1)
  dropped = int((1 - k) * flat.size)
  order = jnp.argsort(flat, stable=True)
  kept = jnp.zeros(flat.shape, importance.dtype).at[order[dropped:]].set(1)
  return kept.reshape(importance.shape)


def edge_popup_mask(importance: jax.Array, k: float) -> jax.Array:
  """``top_k_mask`` with the identity as its gradient (straight-through):
  it adds importance - stop_gradient(importance), which is exactly 0."""
  fixed = jax.lax.stop_gradient(importance)
  return top_k_mask(fixed, k) + (importance - fixed)


def signed_constant(seed: int, layer: int, shape, fan_in: int) -> jax.Array:
  """Layer ``layer``'s frozen weights: random signs times sqrt(2 / fan_in)."""
  key = jax.random.fold_in(jax.random.key(seed), layer)
  return (jax.random.rademacher(key, shape, jnp.float32)
          * math.sqrt(2 / fan_in))


def _score_init(fan_in: int):
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape: jax.random.uniform(key, shape, jnp.float32,
                                               -bound, bound)


def _masked_weight(layer: nn.Module, shape, fan_in: int) -> jax.Array:
  scores = layer.param('scores', _score_init(fan_in), shape)
  weight = signed_constant(layer.seed, layer.index, shape, fan_in)
  return weight * edge_popup_mask(jnp.abs(scores), layer.k)


class SupermaskDense(nn.Module):
  """x @ (weight * mask), no bias; ``index`` picks its frozen weights."""
  features: int
  index: int
  seed: int = 0
  k: float = 0.5

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    return x @ _masked_weight(self, (fan_in, self.features), fan_in)


class SupermaskConv(nn.Module):
  """A stride-1 SAME convolution by (weight * mask), no bias; ``conv`` as
  in models.CNN."""
  features: int
  index: int
  seed: int = 0
  k: float = 0.5
  kernel_size: tuple[int, int] = (3, 3)
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    fan_in = kh * kw * x.shape[-1]
    kernel = _masked_weight(self, (kh, kw, x.shape[-1], self.features),
                            fan_in)
    convolve = {'native': native_conv, 'shifted': shifted_conv}
    return convolve[resolve(self.conv)](x, kernel)


class SupermaskMLP(nn.Module):
  """Fully connected ReLU supermask network."""
  num_classes: int
  hidden: Sequence[int] = (200, 200)
  k: float = 0.5
  seed: int = 0

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    widths = tuple(self.hidden) + (self.num_classes,)
    for i, width in enumerate(widths):
      x = SupermaskDense(width, i, self.seed, self.k, name=f'dense{i}')(x)
      if i < len(self.hidden):
        x = nn.relu(x)
    return x


class SupermaskCNN(nn.Module):
  """FRL's LeNet (models/small.py): 3x3 convs with ReLU, one 2x2 max pool,
  then ReLU dense layers; sized for 8x8 digits by default."""
  num_classes: int
  features: Sequence[int] = (32, 64)
  dense: int = 128
  k: float = 0.5
  seed: int = 0
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x):
    if x.ndim == 3:
      x = x[..., None]
    for i, width in enumerate(self.features):
      x = nn.relu(SupermaskConv(width, i, self.seed, self.k, conv=self.conv,
                                name=f'conv{i}')(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
    layers = len(self.features)
    x = nn.relu(SupermaskDense(self.dense, layers, self.seed, self.k,
                               name='dense0')(x))
    return SupermaskDense(self.num_classes, layers + 1, self.seed, self.k,
                          name='dense1')(x)
