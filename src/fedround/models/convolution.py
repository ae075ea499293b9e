"""Stride-1 SAME convolutions of NHWC inputs with HWIO kernels."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'native', 'shifted')


def shifted_conv(x, kernel):
  """The convolution as a sum of kh * kw shifted matmuls.

  XLA's CPU backend runs convolution *gradients* 20-100x slower inside a
  loop body (jax-ml/jax#12868), and local training is a loop; matmuls do
  not hit that path. Equal to a native convolution up to float rounding.
  """
  kh, kw = kernel.shape[:2]
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2),
                       ((kw - 1) // 2, kw // 2), (0, 0)))
  return sum(padded[:, i:i + height, j:j + width, :] @ kernel[i, j]
             for i in range(kh) for j in range(kw))


def native_conv(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def resolve(implementation: str) -> str:
  """'auto' is 'shifted' on CPU and 'native' elsewhere."""
  if implementation == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'native'
  return implementation
