"""What a model is trained and scored on, by name (``config.task``).

A Task gives the client's cross-entropy ``(logits, labels, valid) ->
scalar`` (``valid``: 1 on real examples, 0 on padding) and ``score(logits,
labels) -> Score``, each example's summed loss and correct predictions with
the counts they are over; evaluation sums scores over examples (and, for the
per-client objective, over each client's examples) and divides.

- ``classification``: one integer label per example.
- ``next_token``: a sequence of integer targets per example (the inputs
  shifted by one), logits [batch, length, vocabulary]. The loss is the mean
  over the non-padding targets; accuracy counts the targets that are not
  padding, out-of-vocabulary, beginning- or end-of-sequence, as TFF's
  Stack Overflow and Shakespeare baselines report it (FedJAX's
  ``SequenceTokenAccuracy`` with those ``masked_target_values``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedround.models import cross_entropy, negative_log_likelihood
from fedround.registry import Registry


class Score(NamedTuple):
  """Per example: the loss summed over its scored targets, their count, its
  correct predictions and the count accuracy is over."""
  loss: jax.Array
  loss_count: jax.Array
  correct: jax.Array
  accuracy_count: jax.Array


class Task(NamedTuple):
  name: str
  cross_entropy: Callable  # (logits, labels, valid) -> scalar
  score: Callable          # (logits, labels) -> Score
  label_rank: int          # 0: a label per example; 1: a target per input
                           # token (labels shaped like the examples)


def classification() -> Task:
  def score(logits, labels):
    ones = jnp.ones(labels.shape, jnp.float32)
    return Score(negative_log_likelihood(logits, labels), ones,
                 (jnp.argmax(logits, -1) == labels).astype(jnp.float32), ones)
  return Task('classification', cross_entropy, score, label_rank=0)


def next_token(num_classes: int, pad: int = 0, bos: int = 1, eos: int = 2,
               oov: int | None = None) -> Task:
  """Next-token prediction over a vocabulary of ``num_classes`` ids with the
  special ids ``pad``, ``bos``, ``eos`` and ``oov`` (default: the last id,
  FedJAX's convention for Shakespeare and Stack Overflow)."""
  oov = num_classes - 1 if oov is None else oov
  special = (pad, bos, eos, oov)
  if not all(isinstance(t, int) and 0 <= t < num_classes for t in special):
    raise ValueError(f'pad, bos, eos and oov must be token ids in '
                     f'0..{num_classes - 1}, got {special}')
  unscored = jnp.array(special)

  def token_loss(logits, labels):
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]

  def loss(logits, labels, valid):
    counted = (labels != pad) * jnp.reshape(valid, (-1, 1))
    return (jnp.sum(token_loss(logits, labels) * counted)
            / jnp.maximum(jnp.sum(counted), 1.0))

  def score(logits, labels):
    counted = (labels != pad).astype(jnp.float32)
    scored = (~jnp.isin(labels, unscored)).astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels) * scored
    return Score(jnp.sum(token_loss(logits, labels) * counted, -1),
                 jnp.sum(counted, -1), jnp.sum(correct, -1),
                 jnp.sum(scored, -1))

  return Task('next_token', loss, score, label_rank=1)


TASKS = Registry('task')
TASKS.register('classification')(classification)
TASKS.register('next_token')(next_token)
