"""What each client sends up: its round's result encoded as a message.

``encode(deltas, params)`` maps the stack of client deltas (leaves
[C, ...]) to the message stack the attack then forges and the aggregator
reads; ``bits(params)`` is one client's uplink in bits; ``project`` maps a
forged stack back onto what the wire can carry.

- identity: the float32 delta, 32 bits per coordinate (FedAvg).
- signs: the sign of each delta coordinate, 1 bit per coordinate (signSGD
  with majority vote: Bernstein et al., ICLR 2019). A coordinate that did
  not move is sent as 0, so it abstains; it needs a third symbol, which
  this count leaves out (it is rare: no gradient reached it).
- ranks: per layer, each edge's position in the client's ranking of its
  final scores, params + delta, from least (0) to most (n_l - 1)
  important (FRL: Mozaffari et al., USENIX Security 2023). FRL's code
  sends the argsort (``Find_rank``) and its server inverts it; the
  positions carry the same information in the same ceil(log2 n_l) bits per
  edge. Ranked by the raw score, as ``Find_rank`` does (the mask uses
  |score|). Final scores are rebuilt as params + delta, so edges within an
  ulp of each other may swap.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedround.registry import Registry

FLOAT32_BITS = 32
REAL_VALUED = ('identity', 'signs')  # stacks of real numbers per coordinate


class Message(NamedTuple):
  kind: str          # its name in MESSAGES
  encode: Callable   # (deltas [C, ...], params) -> message stack [C, ...]
  bits: Callable     # params -> one client's uplink bits (a Python int)
  project: Callable = lambda stack: stack  # forged stack -> a sendable one


def float32_bits(params) -> int:
  """One client's delta sent as float32: what the other kinds compress."""
  return FLOAT32_BITS * sum(leaf.size for leaf in jax.tree.leaves(params))


def identity() -> Message:
  return Message('identity', lambda deltas, params: deltas, float32_bits)


def signs() -> Message:
  return Message(
      'signs', lambda deltas, params: jax.tree.map(jnp.sign, deltas),
      lambda params: sum(leaf.size for leaf in jax.tree.leaves(params)),
      lambda stack: jax.tree.map(jnp.sign, stack))


def positions(scores: jax.Array) -> jax.Array:
  """int32, shaped like ``scores``: each entry's position in the ascending
  order of the flattened scores (ties to the lower flat index)."""
  flat = scores.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(
      jnp.arange(flat.size, dtype=jnp.int32))
  return ranks.reshape(scores.shape)


def rank_bits(params) -> int:
  return sum(leaf.size * math.ceil(math.log2(leaf.size))
             for leaf in jax.tree.leaves(params))


def ranks() -> Message:
  def encode(deltas, params):
    return jax.tree.map(
        lambda d, p: jax.vmap(positions)(p[None] + d), deltas, params)
  return Message('ranks', encode, rank_bits)


MESSAGES = Registry('message')
MESSAGES.register('identity')(identity)
MESSAGES.register('signs')(signs)
MESSAGES.register('ranks')(ranks)
