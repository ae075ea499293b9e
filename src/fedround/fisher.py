"""The diagonal Fisher a client sends for Fisher-weighted merging."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def diagonal_fisher(apply_fn, params, x, valid, *, chunk_size: int = 16):
  """The diagonal of the true Fisher information of a classifier,
  F = E_x E_{y ~ p(y|x)} (grad_params log p(y|x))^2, shaped like ``params``.

  As in Matena & Raffel, "Merging Models with Fisher-Weighted Averaging",
  NeurIPS 2022 (code mmatena/model_merging, model_merging/fisher.py), the
  expectation over y is exact, sum_y p(y|x) g_y^2 over the L classes of
  ``apply_fn(params, x) -> logits [n, L]`` (no sampled labels, and not the
  empirical Fisher of the true labels), and the mean over x runs over the
  examples where ``valid`` (bool or float [n]) is set; padding never
  enters, even when the model gives it non-finite values. With no valid
  example the Fisher is zero.

  Examples go through a scan ``chunk_size`` at a time (one linearisation and
  L pullbacks each), so memory is chunk_size * L model-sized arrays; the
  function jits and vmaps over clients.
  """
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'chunk_size (examples per Fisher step) must be an '
                     f'integer >= 1, got {chunk_size!r}')
  valid = jnp.asarray(valid).astype(jnp.float32)
  count = x.shape[0]
  chunk = min(chunk_size, max(count, 1))
  steps = math.ceil(count / chunk)
  pad = steps * chunk - count
  x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  valid = jnp.concatenate([valid, jnp.zeros(pad, valid.dtype)])
  chunks = (x.reshape((steps, chunk) + x.shape[1:]),
            valid.reshape(steps, chunk))

  def example_fisher(example):
    """sum_y p(y|x) (grad log p(y|x))^2 for one example."""
    def log_probs(p):
      out = jax.nn.log_softmax(apply_fn(p, example[None])[0])
      return out, out

    grads, log_p = jax.jacrev(log_probs, has_aux=True)(params)
    probs = jnp.exp(log_p)
    return jax.tree.map(
        lambda g: jnp.tensordot(probs, jnp.square(g.astype(jnp.float32)),
                                axes=1), grads)

  def step(total, batch):
    examples, keep = batch
    fishers = jax.vmap(example_fisher)(examples)
    return jax.tree.map(
        lambda t, f: t + jnp.sum(
            jnp.where(keep.reshape((-1,) + (1,) * (f.ndim - 1)) > 0, f, 0),
            axis=0), total, fishers), None

  # zeros_like, not zeros: under shard_map the carry must vary over the
  # mesh as the client's params do.
  zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
  total, _ = jax.lax.scan(step, zeros, chunks)
  scale = 1 / jnp.maximum(jnp.sum(valid), 1)
  return jax.tree.map(lambda t, p: (t * scale).astype(p.dtype), total, params)
