"""Attacks that send noise or non-finite values (ALGORITHMS.md section 3)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedround.attacks.base import Attack, from_vector, replace_rows



def gaussian(mu: float = 0.0, sigma: float = 200.0) -> Attack:
  """Each Byzantine client sends its own draw of N(mu, sigma^2) per
  coordinate (ByzFL's Gaussian)."""
  def apply(updates, *, byzantine, honest, key, aggregate=None):
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(key, len(leaves))
    noise = [mu + sigma * jax.random.normal(k, u.shape, jnp.float32)
             for k, u in zip(keys, leaves)]
    return replace_rows(updates, byzantine, jax.tree.unflatten(treedef, noise))
  return Attack(apply)


def inf() -> Attack:
  """Every coordinate +inf: the round excludes (and counts) such updates."""
  return from_vector(lambda u, honest, key: jax.tree.map(
      lambda x: jnp.full(x.shape[1:], jnp.inf), u))


def nan() -> Attack:
  """Every coordinate NaN: the round excludes (and counts) such updates."""
  return from_vector(lambda u, honest, key: jax.tree.map(
      lambda x: jnp.full(x.shape[1:], jnp.nan), u))
