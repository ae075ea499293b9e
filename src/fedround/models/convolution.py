"""Stride-1 SAME convolutions of NHWC inputs with HWIO kernels."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'native', 'shifted')


def shifted_conv(x, kernel, stride: int = 1):
  """The SAME convolution as a sum of kh * kw shifted (strided) matmuls.

  XLA's CPU backend runs convolution *gradients* 20-100x slower inside a
  loop body (jax-ml/jax#12868), and local training is a loop; matmuls do
  not hit that path. Equal to a native convolution up to float rounding.
  """
  kh, kw = kernel.shape[:2]
  height, width = x.shape[1:3]
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + kh - height, 0)
  pad_w = max((out_w - 1) * stride + kw - width, 0)
  padded = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                       (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  window = lambda i, j: padded[:, i:i + (out_h - 1) * stride + 1:stride,
                               j:j + (out_w - 1) * stride + 1:stride, :]
  return sum(window(i, j) @ kernel[i, j]
             for i in range(kh) for j in range(kw))


def native_conv(x, kernel, stride: int = 1):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def resolve(implementation: str) -> str:
  """'auto' is 'shifted' on CPU and 'native' elsewhere."""
  if implementation == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'native'
  return implementation


class ShiftedConv(nn.Module):
  """A SAME convolution computed as a sum of kh * kw shifted matmuls
  (shifted_conv, fast on CPU), with nn.Conv's parameters (kernel
  [kh, kw, in, out], bias)."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1], self.features))
    if self.strides[0] != self.strides[1]:
      raise ValueError(f'ShiftedConv takes equal strides, got {self.strides}')
    y = shifted_conv(x, kernel, self.strides[0])
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


def conv_layer(implementation: str):
  """The SAME convolution module of ``implementation``."""
  return {'native': nn.Conv, 'shifted': ShiftedConv}[resolve(implementation)]
