"""Every check of a run's config before any training, in one place.

- ``fields(config)``: the fields the base config knows, finite numbers in
  range, consistent attack settings.
- ``parts(config, data, model, aggregator, attack, message)``: the built
  parts against each other and the data: the message's payload is one the
  rule reads and the attack forges, the model can send it, a rule that
  returns the model leaves no server optimizer to run, a rule that reads
  Fisher diagonals has a model with logits, attack ids name clients.

A part's own parameters (Krum's f against the cohort, a learning rate's
sign) are checked by its factory, which the registry calls with the field
named. Every failure is a ConfigError of one line naming the field.
"""
from __future__ import annotations

import difflib

import jax
import jax.numpy as jnp
import ml_collections

from fedround.aggregators.base import Aggregate
from fedround.attacks import ATTACKS
from fedround.client import ClientOutput
from fedround.config import DATA_SPLITS, PLACEMENTS, base_config
from fedround.messages import MESSAGES
from fedround.models import MODELS
from fedround.registry import ConfigError, non_finite


def _check_fields(config, reference, path):
  for key in config.keys():
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ConfigError(
          f'{path}.{key}: unknown config field{hint}; valid fields: '
          f'{", ".join(sorted(reference.keys()))}')
    if isinstance(reference[key], ml_collections.ConfigDict) and key != 'data':
      _check_fields(config[key], reference[key], f'{path}.{key}')


def _check_finite(node, path):
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite(value, f'{path}.{key}')
    elif non_finite(value):
      raise ConfigError(f'{path}.{key} must be finite, got {value!r}')


def fields(config: ml_collections.ConfigDict) -> None:
  """Fails on fields the base config does not know and on bad numbers."""
  _check_fields(config, base_config(), 'config')
  _check_finite(config, 'config')
  if 'name' not in config.data:
    raise ConfigError('config.data.name: missing; name a data set')
  for field in ('rounds', 'clients_per_round', 'eval_every',
                'checkpoint_every', 'keep_checkpoints', 'halt_after'):
    value = config[field]
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f'config.{field} must be a positive integer, got '
                        f'{value!r}')
  for field in ('client', 'server'):
    value = config[field].learning_rate
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        value > 0):
      raise ConfigError(f'config.{field}.learning_rate must be a number > 0, '
                        f'got {value!r}')
  value = config.loss_explosion
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      value > 1):
    raise ConfigError(f'config.loss_explosion must be a number > 1, got '
                      f'{value!r}')
  for split in DATA_SPLITS:
    value = config.data.get(split, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        not 0 <= value < 1):
      raise ConfigError(f'config.data.{split} must be a number in [0, 1), '
                        f'got {value!r}')
  placement = config.data.get('placement', 'device')
  if placement not in PLACEMENTS:
    raise ConfigError(f'config.data.placement must be one of '
                      f'{", ".join(map(repr, PLACEMENTS))}, got {placement!r}')
  if placement == 'host' and config.eval_train:
    raise ConfigError("config.eval_train reads every client's examples on "
                      "the device; it needs config.data.placement='device'")
  if placement == 'host' and jax.process_count() > 1:
    raise ConfigError("config.data.placement='host' runs in one process; a "
                      'multi-process run holds the federation on its '
                      "devices: use config.data.placement='device'")
  fraction, ids = config.attack.fraction, config.attack.ids
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or (
      not 0 <= fraction < 1):
    raise ConfigError('config.attack.fraction must be a number in [0, 1), '
                      f'got {fraction!r}')
  if not isinstance(ids, (tuple, list)) or not all(
      isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
    raise ConfigError('config.attack.ids must be a tuple of client ids >= 0, '
                      f'got {ids!r}')
  share = config.attack.redraw_share
  if isinstance(share, bool) or not isinstance(share, (int, float)) or (
      not 0 <= share <= 1):
    raise ConfigError('config.attack.redraw_share must be a number in [0, 1] '
                      f'(0: never redraw a cohort), got {share!r}')
  if ids and fraction:
    raise ConfigError('config.attack: set either fraction or ids, not both; '
                      f'got fraction={fraction!r}, ids={tuple(ids)!r}')
  if len(set(ids)) != len(ids):
    raise ConfigError(f'config.attack.ids has repeated clients: {tuple(ids)}')


def parts(config, data, model, task, aggregator, attack, message) -> None:
  """The built parts against each other and the data (module doc)."""
  if any(i >= data.num_clients for i in config.attack.ids):
    raise ConfigError(f'config.attack.ids: {tuple(config.attack.ids)} names '
                      f'clients beyond the federation; valid ids: 0..'
                      f'{data.num_clients - 1}')
  if ClientOutput.FISHER in aggregator.reads.outputs:
    _probabilistic(config, model, data)
  _message(config, message, aggregator, attack, model, data)
  _task(config, task, model, data)


def _message(config, message, aggregator, attack, model, data) -> None:
  """The message's payload must be one the rule reads and the attack
  forges, and the model one it can be sent from; a rule whose aggregate is
  the model leaves no step for a server optimizer."""
  kind = message.kind
  if message.carries not in aggregator.reads.payloads:
    readable = [name for name in MESSAGES.names() if MESSAGES.build(
        name, 'config.client.message').carries in aggregator.reads.payloads]
    raise ConfigError(
        f'config.client.message {kind!r} cannot feed config.aggregator '
        f'{config.aggregator!r}, which reads: '
        f'{", ".join(readable) or "no kind all its parts share"}')
  if message.carries not in attack.forges:
    valid = [name for name in ATTACKS.names() if message.carries in
             ATTACKS.build(name, 'config.attack.name').forges]
    raise ConfigError(
        f'config.attack.name {config.attack.name!r} cannot forge {kind!r} '
        f'messages; attacks on {kind!r} messages: {", ".join(valid)}')
  problem = message.check(_abstract_params(model, _example(data)),
                          f'config.model {config.model!r}')
  if problem:
    supermasks = [name for name in MODELS.names()
                  if name.startswith('supermask')]
    raise ConfigError(f'config.client.message {kind!r} {problem}; supermask '
                      f'models: {", ".join(supermasks)}')
  server = config.server
  if aggregator.output is Aggregate.MODEL and (
      server.optimizer, server.learning_rate,
      server.schedule) != ('sgd', 1, 'constant'):
    raise ConfigError(
        f'config.server: config.aggregator {config.aggregator!r} sets the '
        'global model itself, so no server optimizer runs; leave '
        "optimizer='sgd', learning_rate=1.0, schedule='constant' (got "
        f'{server.optimizer!r}, {server.learning_rate!r}, '
        f'{server.schedule!r})')


# A sweep's hundreds of cells on one model and data shape trace its init
# once. Keyed by the module's class and repr (its fields), not its hash:
# dataclass equality takes 200.0 for 200, and a field may be unhashable.
_SHAPES: dict = {}


def _example(data):
  """(shape, dtype) of one training example."""
  return data.example_shape, jnp.dtype(data.train.x.dtype)


def _memo(kind: str, model, example, compute):
  key = (kind, type(model), repr(model), example)
  if key not in _SHAPES:
    if len(_SHAPES) >= 256:
      _SHAPES.clear()
    _SHAPES[key] = compute()
  return _SHAPES[key]


def _abstract_params(model, example):
  """The model's parameter shapes (nothing is computed) on an example of
  ``example`` = (shape, dtype)."""
  x = jax.ShapeDtypeStruct((1,) + example[0], example[1])
  return _memo('params', model, example, lambda: jax.eval_shape(
      model.init, jax.random.PRNGKey(0), x))


def _output_shape(model, example):
  """The model's output shape on a batch of 2 (nothing is computed)."""
  x = jax.ShapeDtypeStruct((2,) + example[0], example[1])
  return _memo('output', model, example, lambda: jax.eval_shape(
      lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x),
      x).shape)


def _task(config, task, model, data) -> None:
  """Labels and model outputs of the task's shape: one label per example
  and logits [batch, classes] for classification; a target per input token
  and logits [batch, length, vocabulary] for next-token prediction."""
  label_shape = tuple(data.train.y.shape[1:])
  labels = 'sequences' if task.label_rank else 'one integer per example'
  if len(label_shape) != task.label_rank or (
      task.label_rank and label_shape != data.example_shape):
    raise ConfigError(
        f'config.task {config.task!r} needs labels that are {labels}; '
        f'config.data {config.data.name!r} has labels of shape '
        f'{label_shape} for examples of shape {data.example_shape}')
  shape = _output_shape(model, _example(data))
  expected = (2, *label_shape, data.num_classes)  # logits for every label
  if shape != expected:
    raise ConfigError(
        f'config.model {config.model!r} outputs {shape} for a batch of 2; '
        f'config.task {config.task!r} needs {expected}')


def _probabilistic(config, model, data) -> None:
  """The Fisher of p(y|x) needs logits over the classes, one row each."""
  shape = _output_shape(model, _example(data))
  if shape != (2, data.num_classes):
    raise ConfigError(
        f'config.aggregator {config.aggregator!r} needs each client\'s '
        'Fisher information of p(y|x), so the model must output logits '
        f'[batch, {data.num_classes} classes]; config.model '
        f'{config.model!r} outputs {shape} for a batch of 2')
