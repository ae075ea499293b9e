"""What each client sends up: its round's result encoded as a message.

``encode(deltas, params)`` maps the stack of client deltas (leaves
[C, ...]) to the message stack the attack then forges; ``decode`` maps what
the server receives to what the aggregator reads (the identity for the
kinds below: each is read as sent), which holds ``carries`` (a Payload);
``bits(params)`` is one client's uplink in bits; ``project`` maps a forged
stack back onto what the wire can carry.

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

import enum
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedround.registry import Registry

FLOAT32_BITS = 32


class Payload(enum.Enum):
  """What a message stack holds per coordinate."""
  REAL = 'real'  # a real number (the float32 delta)
  SIGN = 'sign'  # its sign, -1, 0 or 1
  RANK = 'rank'  # the edge's position in its layer's ranking


REAL_VALUED = frozenset({Payload.REAL, Payload.SIGN})


def _sent(stack):
  return stack


class Message(NamedTuple):
  """``encode`` on the client side, ``decode`` on the server's: what the
  aggregator reads is ``decode(encode(deltas))``, which carries
  ``carries``."""
  kind: str          # its name in MESSAGES
  carries: Payload
  encode: Callable   # (deltas [C, ...], params) -> message stack [C, ...]
  bits: Callable     # params -> one client's uplink bits (a Python int)
  project: Callable = _sent  # forged stack -> a sendable one
  decode: Callable = _sent   # received stack -> what the rule reads
  # (params, model) -> why ``model`` (its name, for the message) with these
  # params cannot send it, in one line, or None.
  check: Callable = lambda params, model: None


def float32_bits(params) -> int:
  """One client's delta sent as float32: what the other kinds compress."""
  return FLOAT32_BITS * sum(leaf.size for leaf in jax.tree.leaves(params))


def identity() -> Message:
  return Message('identity', Payload.REAL, lambda deltas, params: deltas,
                 float32_bits)


def signs() -> Message:
  return Message(
      'signs', Payload.SIGN,
      lambda deltas, params: jax.tree.map(jnp.sign, deltas),
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
  def check(params, model):
    others = [jax.tree_util.keystr(path) for path, _ in
              jax.tree_util.tree_flatten_with_path(params)[0]
              if getattr(path[-1], 'key', None) != 'scores']
    return (f'ranks supermask scores, but {model} has {others[0]}'
            if others else None)

  return Message('ranks', Payload.RANK, encode, rank_bits, check=check)


MESSAGES = Registry('message')
MESSAGES.register('identity')(identity)
MESSAGES.register('signs')(signs)
MESSAGES.register('ranks')(ranks)
