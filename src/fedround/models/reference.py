"""The models of the reference FL benchmarks (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, as TFF and FedJAX build them).

Parameter counts (tests/test_reference_models.py checks each):
- ``EmnistCNN``: 1,206,590 for 62 classes (FedJAX's ``create_conv_model``).
- ``ResNet18GN``: 11,227,812 for CIFAR-100, 11,181,642 for CIFAR-10 (TFF's
  ``create_resnet18``, any image size; the paper lists no count).
- ``LSTMLanguageModel``: 820,522 for Shakespeare's 90 characters (embedding
  8, two LSTMs of 256); 4,050,748 for Stack Overflow's 10,004 words
  (embedding 96, LSTM 670, projection 96), as FedJAX's tests and the paper.
- ``TransformerLM``: a small decoder-only model for the same tasks.
- ``LSTMClassifier``: LEAF's ``stacked_lstm`` models, a class from the last
  step's output: 817,872 for Shakespeare (80 letters, embedding 8, two
  LSTMs of 256); 40,174,086 for Sent140 over GloVe's 400,000 words and
  the unknown id (embedding and two LSTMs of 100, a linear layer of 128, 2
  classes; the embedding is 40,000,100 of them).
  TensorFlow's ``BasicLSTMCell`` adds 1 to the forget gate's bias; flax's
  cell does not.

fedround's models are deterministic functions of (params, x): the dropout
of FedJAX's EMNIST CNN is left out (FedJAX: 0.25 after the convolutions,
0.5 after the dense layer).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fedround.models.convolution import conv_layer


class EmnistCNN(nn.Module):
  """McMahan et al. (AISTATS 2017)'s CNN as Reddi et al. and FedJAX train
  it on EMNIST: two 3x3 VALID convolutions of 32 and 64 channels with ReLU,
  2x2 max pooling, a dense layer of 128 with ReLU and the output layer."""
  num_classes: int
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x):
    if x.ndim == 3:
      x = x[..., None]
    layer = conv_layer(self.conv)
    for i, width in enumerate((32, 64)):
      # VALID is SAME without its border: the same parameters either way.
      x = nn.relu(layer(width, (3, 3), name=f'conv{i}')(x)[:, 1:-1, 1:-1])
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


class ResNet18GN(nn.Module):
  """TFF's ``create_resnet18`` (tff.simulation.models.resnet_models), the
  CIFAR model of Reddi et al.: ResNet v2 (He et al., ECCV 2016) with basic
  blocks and group normalisation (Hsieh et al., ICML 2020), 2 groups (the
  default of the tfa.layers.GroupNormalization TFF used). A 7x7 stride-2
  stem convolution, 3x3 stride-2 max pooling, four stages of two blocks of
  ``width`` x 1, 2, 4, 8 channels, all at stride 1 as in TFF's code, a final
  norm and ReLU, global average pooling and the output layer."""
  num_classes: int
  width: int = 64
  groups: int = 2
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x):
    he = nn.initializers.he_normal()
    # Named, so that both implementations hold the same parameters.
    conv = lambda c, k, name: conv_layer(self.conv)(
        c, (k, k), use_bias=False, kernel_init=he, name=name)
    norm_relu = lambda x: nn.relu(nn.GroupNorm(num_groups=self.groups)(x))
    x = conv_layer(self.conv)(self.width, (7, 7), strides=(2, 2),
                              use_bias=False, kernel_init=he, name='stem')(x)
    x = nn.max_pool(norm_relu(x), (3, 3), strides=(2, 2), padding='SAME')
    for stage in range(4):
      channels = self.width * 2 ** stage
      for block in range(2):
        first = stage == 0 and block == 0  # TFF: no norm before it
        name = f'stage{stage}_block{block}'
        shortcut = x
        y = conv(channels, 3, f'{name}_conv0')(x if first else norm_relu(x))
        y = conv(channels, 3, f'{name}_conv1')(norm_relu(y))
        if shortcut.shape[-1] != channels:
          shortcut = nn.GroupNorm(num_groups=self.groups)(
              conv(channels, 1, f'{name}_shortcut')(shortcut))
        x = shortcut + y
    x = jnp.mean(norm_relu(x), axis=(1, 2))
    return nn.Dense(self.num_classes,
                    kernel_init=nn.initializers.normal(0.01))(x)


class LSTMLanguageModel(nn.Module):
  """Token ids [batch, length] -> next-token logits: an embedding, stacked
  LSTMs, an optional dense projection and the output layer (Reddi et al.'s
  Shakespeare and Stack Overflow models)."""
  num_classes: int
  embed: int = 8
  hidden: Sequence[int] = (256, 256)
  projection: int = 0

  @nn.compact
  def __call__(self, tokens):
    x = _stacked_lstm(nn.Embed(self.num_classes, self.embed)(tokens),
                      self.hidden)
    if self.projection:
      x = nn.Dense(self.projection)(x)
    return nn.Dense(self.num_classes)(x)


class LSTMClassifier(nn.Module):
  """Token ids [batch, length] -> class logits: an embedding of
  ``vocabulary`` ids, stacked LSTMs, an optional linear layer of ``dense``
  on the last step's output, and the output layer (LEAF's Shakespeare and
  Sent140 ``stacked_lstm``)."""
  num_classes: int
  vocabulary: int
  embed: int = 8
  hidden: Sequence[int] = (256, 256)
  dense: int = 0

  @nn.compact
  def __call__(self, tokens):
    x = _stacked_lstm(nn.Embed(self.vocabulary, self.embed)(tokens),
                      self.hidden)[:, -1]
    if self.dense:
      x = nn.Dense(self.dense)(x)
    return nn.Dense(self.num_classes)(x)


def _stacked_lstm(x, hidden: Sequence[int]):
  """[batch, length, features] through LSTMs of widths ``hidden``."""
  for width in hidden:
    # The initial state from the input, so that under shard_map it varies
    # over the devices as the state the scan carries does.
    zero = jnp.zeros_like(x[:, 0, :1]) * jnp.zeros(width, x.dtype)
    x = nn.RNN(nn.OptimizedLSTMCell(width))(x, initial_carry=(zero, zero))
  return x


class TransformerLM(nn.Module):
  """A small decoder-only transformer (pre-norm, causal self-attention,
  learned positions up to ``max_length``) for next-token prediction."""
  num_classes: int
  width: int = 128
  depth: int = 2
  heads: int = 4
  mlp: int = 512
  max_length: int = 128

  @nn.compact
  def __call__(self, tokens):
    length = tokens.shape[-1]
    positions = self.param('positions', nn.initializers.normal(0.02),
                           (self.max_length, self.width))
    x = nn.Embed(self.num_classes, self.width)(tokens) + positions[:length]
    mask = nn.make_causal_mask(tokens)
    for _ in range(self.depth):
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(
          nn.LayerNorm()(x), mask=mask)
      h = nn.gelu(nn.Dense(self.mlp)(nn.LayerNorm()(x)))
      x = x + nn.Dense(self.width)(h)
    return nn.Dense(self.num_classes)(nn.LayerNorm()(x))
