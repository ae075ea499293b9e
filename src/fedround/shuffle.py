"""A keyed permutation of [0, n) evaluated one position at a time.

Local epochs visit a client's n examples in a fresh random order per epoch.
Drawing that order by sorting n random keys costs a sort over the
federation's largest client for every client and epoch (static shapes), the
bulk of a small model's round. Instead the order is the swap-or-not cipher
of Hoang, Morris & Rogaway, "An Enciphering Scheme Based on a Card Shuffle"
(CRYPTO 2012), which Ethereum's consensus spec uses to shuffle validators:
round i pairs x with K_i - x (mod n) and swaps the pair when a keyed bit of
max(x, K_i - x) is set. Each round is a bijection of [0, n) for any n, so
the batch at step k costs O(B * rounds) and no memory of the client's size.
It runs 6 lg n rounds, the order of rounds the paper's analysis asks for
when every point of the domain is used; the tests check it is a bijection
for every size tried and that the orders of a few items come out uniformly.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def num_rounds(max_n: int) -> int:
  """6 lg n rounds, for the largest domain the permutation will see."""
  return 6 * max(1, math.ceil(math.log2(max(max_n, 2))))


def round_keys(key, rounds: int) -> jax.Array:
  """uint32[2, rounds]: each round's pairing key and bit seed."""
  return jax.random.bits(key, (2, rounds), jnp.uint32)


def _bit(value, seed):
  """A keyed bit of ``value``: the top bit of two multiply-xorshift steps
  (the multipliers of MurmurHash3's finaliser)."""
  h = (value ^ seed) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 16)) * jnp.uint32(0xC2B2AE35)
  return h >= jnp.uint32(2 ** 31)


def permute(positions, n, keys) -> jax.Array:
  """int32: the keyed permutation of [0, n) at ``positions`` (int32 in
  [0, n), any shape); ``keys`` from ``round_keys``, ``n`` >= 1 (traced)."""
  x = positions.astype(jnp.int32)
  n = jnp.asarray(n, jnp.int32)
  pairing = (keys[0] % n.astype(jnp.uint32)).astype(jnp.int32)

  def swap_or_not(i, x):
    partner = pairing[i] - x
    partner = partner + (n & (partner >> 31))  # (K_i - x) mod n
    swap = _bit(jnp.maximum(x, partner).astype(jnp.uint32), keys[1, i])
    return jnp.where(swap, partner, x)

  return jax.lax.fori_loop(0, keys.shape[1], swap_or_not, x)
