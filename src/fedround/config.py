"""The base experiment config and variant strings.

Every experiment file starts from ``base_config()`` and sets what differs;
``fedround.validate`` checks the result before any training, so a typo
fails with the valid field names.
"""
from __future__ import annotations

import ast

import ml_collections

from fedround.registry import ConfigError


# config.data keys that are not the data set's own: a server proxy set
# taken out of the test split, and a validation split out of each client's
# examples (FederatedData.with_splits). Both default to 0 (none).
DATA_SPLITS = ('proxy_fraction', 'validation_fraction')
# Where the training examples live: 'device' (default; replicated on every
# device) or 'host' (host memory; each round's cohort is packed and sent
# ahead, fedround.data.host). Also a config.data key that is fedround's.
PLACEMENTS = ('device', 'host')
DATA_OPTIONS = DATA_SPLITS + ('placement',)
DATA_DEFAULTS = {'proxy_fraction': 0.0, 'validation_fraction': 0.0,
                 'placement': 'device'}


def data(name: str, **kwargs) -> ml_collections.ConfigDict:
  """``config.data`` for the data set ``name`` (a DATASETS entry) and its
  keyword arguments, with fedround's own options at their defaults
  (DATA_DEFAULTS), so that a command line can set them
  (``--config.data.placement=host``)."""
  return ml_collections.ConfigDict({'name': name, **DATA_DEFAULTS, **kwargs})


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.rounds = 100
  c.clients_per_round = 10
  # Data set: a registry name plus that data set's keyword arguments, and
  # optionally the splits fedround takes out of it (DATA_SPLITS).
  c.data = data('synthetic')
  c.model = 'logistic'
  # What the model predicts (fedround.tasks.TASKS): classification, or
  # next_token(pad, bos, eos, oov) over sequences; it picks the loss and the
  # metrics.
  c.task = 'classification'
  c.participation = 'uniform'
  c.client = ml_collections.ConfigDict(dict(
      optimizer='sgd', learning_rate=0.01, batch_size=10,
      local_steps=0, local_epochs=1, loss='cross_entropy',
      # What clients do besides plain local training, and keep across
      # rounds (fedround.client_algorithms): fedprox(mu=0.01), scaffold,
      # fedavg_m(beta=0.1), scaffold_m(beta=0.1), diloco.
      algorithm='fedavg',
      # The learning rate's multiplier over rounds (optimizers.SCHEDULES):
      # constant, cosine(rounds), warmup_cosine(warmup, rounds), step(every),
      # exponential(rate).
      schedule='constant',
      # ... and within a round, over the local epochs (or steps)
      # (optimizers.LOCAL_SCHEDULES): constant, cosine.
      local_schedule='constant',
      # What each client sends (fedround.messages): identity (its float32
      # delta), signs (1 bit a coordinate), ranks (FRL's edge rankings).
      message='identity',
      # vmap lanes per device; each lane trains several clients one after
      # another (fedround.lanes). 0: the most lanes whose simulated idle
      # fraction is at most 10% (one per client under local_steps).
      lanes=0))
  # Pre-aggregators and one rule, joined by '|'; empty: the client
  # algorithm's own, as its paper aggregates (weighted_mean for fedavg and
  # fedprox, the uniform mean for scaffold, fedavg_m, scaffold_m, diloco).
  # A run writes the rule it used into its config.json.
  c.aggregator = ''
  # Simulated Byzantine clients: an attack spec (fedround.attacks.ATTACKS)
  # and who attacks: a fraction of the N clients or explicit client ids.
  # redraw_share > 0: a cohort whose attackers number at least
  # redraw_share x its present clients is drawn again (FRL's code: 0.5);
  # 0: never.
  c.attack = ml_collections.ConfigDict(dict(name='none', fraction=0.0,
                                            ids=(), redraw_share=0.0))
  # The optimizer on the pseudo-gradient -aggregate (optimizers.OPTIMIZERS):
  # sgd at 1.0 is FedAvg; fedavgm, fedadam, fedyogi, fedadagrad, diloco.
  c.server = ml_collections.ConfigDict(dict(optimizer='sgd',
                                            learning_rate=1.0,
                                            schedule='constant'))
  c.eval_every = 10
  # Also evaluate the global model on every client's training examples
  # (global_train_loss / _accuracy: the mean over the N clients of each
  # client's mean, the objective FedAU targets); costs a pass over the data.
  c.eval_train = False
  c.checkpoint_every = 50
  # Checkpoints kept (the newest; a non-finite state is never saved, so the
  # newest kept one is always good).
  c.keep_checkpoints = 2
  # Divergence (fedround.divergence): a round is unhealthy when every client
  # is excluded as non-finite, the aggregate is refused as non-finite, or
  # the train loss exceeds loss_explosion x its running minimum; the run
  # stops after halt_after unhealthy rounds in a row.
  c.loss_explosion = 100.0
  c.halt_after = 10
  c.shard = True  # shard the client axis when there is more than one device
  # With shard, the device mesh: the cohort split over `clients` devices (0:
  # every device the model axis leaves), each client's model, optimizer
  # state and store split over `model` devices (rounds.model_spec: FSDP by
  # parameter shapes). clients x model must be the device count.
  c.mesh = ml_collections.ConfigDict({'clients': 0, 'model': 1})
  c.progress = True
  return c


def parse_variant(arg: str | None, **defaults):
  """``'alpha=0.5,beta=1'`` -> ConfigDict of ``defaults`` updated by it.

  Values are Python literals; bare words are strings. Unknown keys fail with
  the valid ones.
  """
  variant = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in defaults:
      raise ConfigError(f'config variant {item!r}: expected key=value with '
                        f'key in {", ".join(sorted(defaults))}')
    try:
      parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      parsed = value.strip()
    try:
      variant[key] = parsed
    except TypeError:
      raise ConfigError(f'config variant {item!r}: {key} must be of type '
                        f'{type(defaults[key]).__name__}') from None
  return variant
