"""Data poisoning (ALGORITHMS.md section 3)."""
from __future__ import annotations

import jax.numpy as jnp

from fedround.attacks.base import ANY_PAYLOAD, Attack, unforged


def label_flip() -> Attack:
  """Data poisoning (Tolpegin et al., ESORICS 2020): Byzantine clients train
  on labels y -> (L - 1) - y and send that update unchanged."""
  def poison(data, byzantine, num_classes):
    owner = data.owner()
    flipped = (owner >= 0) & byzantine[jnp.maximum(owner, 0)]
    flipped = flipped.reshape(flipped.shape + (1,) * (data.y.ndim - 1))
    return data.replace(y=jnp.where(flipped, num_classes - 1 - data.y,
                                    data.y))

  return Attack(unforged, poison, forges=ANY_PAYLOAD)
