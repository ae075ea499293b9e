"""Client objectives by name (``config.client.loss``): a loss is
``(logits, labels, valid) -> scalar``, valid = 1 on real examples. Each
factory receives the run's task (fedround.tasks)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.models import cross_entropy as _cross_entropy
from fedround.registry import Registry
from fedround.tasks import Task, classification

LOSSES = Registry('client loss')


def cross_entropy(task: Task = classification()):
  """The task's mean cross-entropy over the valid examples (over their
  non-padding targets for next-token prediction)."""
  return task.cross_entropy


def fedld_margin(lam: float = 0.03, task: Task = classification()):
  """Cross-entropy plus FedLD's ``margin_loss`` (lam = 0.03 as in the
  official code's margin_loss_penalty); classification only."""
  if task.label_rank:
    raise ValueError(f'fedld_margin is a classification loss; the task is '
                     f'{task.name}')
  if not lam >= 0:
    raise ValueError(f'lam (the margin-control weight) must be >= 0, got '
                     f'{lam!r}')
  return lambda logits, labels, valid: (
      _cross_entropy(logits, labels, valid) + margin_loss(logits, valid, lam))


def margin_loss(logits, valid, lam: float = 0.03):
  """FedLD's margin-control term lam * log(1 + ||softmax(logits)||_F^2)
  (Zeng et al., "Tackling Data Heterogeneity in Federated Learning via Loss
  Decomposition", MICCAI 2024; code Zeng-Shuang/FedLD, methods/fedld.py,
  ``MarginalLogLoss``), added to the mean cross-entropy of a batch.

  The official code takes ``torch.norm(softmax(output), p=2)`` of the whole
  [batch, L] matrix: the Frobenius norm, so ||.||_F^2 is a sum (not a mean)
  of p(y|x)^2 over examples and classes. Here the sum runs over the rows
  where ``valid`` is set; with none it is log(1) = 0.
  """
  keep = jnp.asarray(valid).reshape(-1, 1) > 0
  # Padding rows are replaced before the softmax, so that whatever they
  # hold reaches neither the value nor the gradient.
  probs = jax.nn.softmax(jnp.where(keep, logits, 0).astype(jnp.float32),
                         axis=-1)
  return lam * jnp.log1p(jnp.sum(jnp.where(keep, probs ** 2, 0)))


LOSSES.register('cross_entropy')(cross_entropy)
LOSSES.register('fedld_margin')(fedld_margin)
