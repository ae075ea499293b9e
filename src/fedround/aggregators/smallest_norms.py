"""The mean of the k present updates of smallest norm: the README's worked
example of adding a rule (one module plus one registry line).

Keeping only small updates is the idea behind norm thresholding against
model replacement (Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor
Federated Learning?", 2019, arXiv:1911.07963), which clips norms rather
than selecting by them; this selection rule is not from a paper.
"""
from __future__ import annotations

import jax.numpy as jnp

from fedround.aggregators import stack
from fedround.aggregators.base import Aggregator, RoundContext


def smallest_norms_mean(k: int | None = None,
                        num_clients: int | None = None) -> Aggregator:
  """The uniform mean of the ``k`` present updates with the smallest norms
  (ties to the lower slot); with fewer present, all of them. ``k`` None:
  half the present updates, rounded up. Updates of any size: the norms
  never overflow (``stack.norms``)."""
  if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                        or k < 1):
    raise ValueError(f'k (the updates kept) must be an integer >= 1, got '
                     f'{k!r}')
  if k is not None and num_clients is not None and k > num_clients:
    raise ValueError(f'k={k} keeps more updates than the {num_clients} '
                     'clients of a round')

  def update(updates, state, params=None, *, weights, key=None,
             context=RoundContext()):
    del params, key, context
    usable = stack.present(weights)
    count = jnp.sum(usable)
    keep = (count + 1) // 2 if k is None else jnp.minimum(k, count)
    norms = jnp.where(usable, stack.norms(updates), jnp.inf)
    order = jnp.argsort(norms, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
    kept = usable & (rank < keep)
    return stack.mean_of(stack.zero_absent(updates, kept), kept), state

  return Aggregator(lambda params: (), update)
