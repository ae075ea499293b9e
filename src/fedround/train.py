"""run(config, workdir): build every part from the config, then loop
``state, store, metrics = rounds(state, store, data, num_active)`` (the
server state and the per-client store) with evaluation, JSON-lines
metrics, Orbax checkpoints and resumption from the latest checkpoint.

run_replicas(configs, workdirs): the same for runs that differ only in seed
and traced hyper-parameters, vmapped over a leading replica axis."""
from __future__ import annotations

import contextlib
import json
import logging as std_logging
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from fedround import config as config_lib
from fedround import lanes, validate
from fedround.data import host
from fedround.aggregators import build_aggregator
from fedround.aggregators.base import Aggregate
from fedround.attacks import ATTACKS
from fedround.client import (Client, check_schedule, make_client,
                             schedule_steps)
from fedround.client_algorithms import CLIENT_ALGORITHMS, init_store
from fedround.data import DATASETS, PARTICIPATION, FederatedData
from fedround.distributed import is_primary, sync
from fedround.divergence import Watch
from fedround.models import MODELS
from fedround.optimizers import (LOCAL_SCHEDULES, build_optimizer,
                                  build_schedule)
from fedround.registry import ConfigError
from fedround.losses import LOSSES
from fedround.tasks import TASKS
from fedround.messages import MESSAGES
from fedround.rounds import (PARTICIPATION_STREAM, Round, make_evaluate,
                             make_evaluate_clients, make_mesh, make_round,
                             make_rounds, mesh_shape, place, replicate)
from fedround.server import (TRACED_HPARAMS, ServerState, assign,
                             init_server_state, optimizer_step)
from fedround.workdir import Checkpoints, RunError, hold, restore_newest_good


class Experiment(NamedTuple):
  """Every part of a run, built from a config, placed on the mesh."""
  config: ml_collections.ConfigDict
  data: FederatedData
  model: nn.Module
  task: Any  # tasks.Task
  client: Client
  round: Round
  server_update: Any  # server.ServerUpdate
  aggregator: Any
  mesh: Any
  participation: Any
  # jit(init_key, run_key, example_x, client_lr, server_lr)
  #   -> (ServerState, store)
  initial_state: Any

  def init_state(self, config: ml_collections.ConfigDict | None = None
                 ) -> tuple[ServerState, Any]:
    """Round 0's (server state, per-client store) for ``config`` (default:
    the built one), placed on the mesh; a replica's config may differ from
    it in ``seed`` and the TRACED_HPARAMS fields only, and shares this
    experiment's one compiled initialisation."""
    config = config or self.config
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state, store = self.initial_state(
        init_key, run_key, self.data.train.x[:1],
        jnp.float32(config.client.learning_rate),
        jnp.float32(config.server.learning_rate))
    return place(state, store, self.mesh, self.data.num_clients)


def _make_initial_state(model, client, server_update, aggregator,
                        participation, num_clients):
  """Round 0's (state, store) as one compiled function of the keys and
  learning rates (eagerly, a model's init compiles dozens of small
  programs)."""

  def initial_state(init_key, run_key, example_x, client_learning_rate,
                    server_learning_rate):
    params = model.init(init_key, example_x)
    state = init_server_state(
        params, server_update=server_update, aggregator=aggregator,
        key=run_key, client_learning_rate=client_learning_rate,
        server_learning_rate=server_learning_rate,
        shared=client.algorithm.init_shared(params),
        participation_state=participation.init(
            jax.random.fold_in(run_key, PARTICIPATION_STREAM)))
    return state, init_store(client.algorithm, params, num_clients,
                             client.optimizer)

  return jax.jit(initial_state)


class RunResult(NamedTuple):
  state: ServerState
  store: Any  # the per-client store, leading axis of the N clients
  summary: dict


def on_host(config) -> bool:
  """Whether the run keeps its training examples on the host."""
  return config.data.get('placement', 'device') == 'host'


def _data_kwargs(config) -> dict:
  return {k: v for k, v in config.data.items()
          if k != 'name' and k not in config_lib.DATA_OPTIONS}


_DATA_CACHE: dict[str, FederatedData] = {}


def load_federation(config: ml_collections.ConfigDict) -> FederatedData:
  """The federation ``config.data`` names, as its source gives it (no
  proxy or validation splits)."""
  return DATASETS.call(config.data.name, _data_kwargs(config), 'config.data')


def load_data(config: ml_collections.ConfigDict) -> FederatedData:
  """The federation of ``config.data`` with its splits, cached by config so
  that vetting a sweep's runs loads each data set once."""
  key = json.dumps(config.data.to_dict(), sort_keys=True, default=repr)
  if key not in _DATA_CACHE:
    data = load_federation(config)
    try:
      data = data.with_splits(
          **{s: config.data.get(s, 0.0) for s in config_lib.DATA_SPLITS},
          seed=config.data.get('seed', 0))
    except ValueError as e:
      raise ConfigError(f'config.data: {e}') from None
    if len(_DATA_CACHE) >= 8:
      _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
    _DATA_CACHE[key] = data
  return _DATA_CACHE[key]


class _Parts(NamedTuple):
  data: FederatedData
  participation: Any
  model: nn.Module
  task: Any
  client: Client
  aggregator: Any
  server_update: Any
  attack: Any
  client_schedule: Any
  server_schedule: Any
  message: Any


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with an empty ``aggregator`` set to the client algorithm's
  own (ClientAlgorithm.aggregator, its paper's rule); a copy when it
  changes, so the caller's config stays as written."""
  validate.fields(config)
  if config.aggregator:
    return config
  algorithm = CLIENT_ALGORITHMS.build(config.client.algorithm,
                                      'config.client.algorithm')
  config = config.copy_and_resolve_references()
  config.aggregator = algorithm.aggregator
  return config


def choose_lanes(config: ml_collections.ConfigDict, data) -> int:
  """``config.client.lanes`` when 0: ``lanes.choose_lanes`` for the
  schedules of the federation's clients and each client device's share of
  the cohort (sampled uniformly in its simulation)."""
  devices = mesh_shape(config.mesh.clients, config.mesh.model,
                       jax.device_count())[0] if config.shard else 1
  clients = -(-config.clients_per_round // devices)
  schedule = dict(batch_size=config.client.batch_size,
                  local_steps=config.client.local_steps,
                  local_epochs=config.client.local_epochs)
  check_schedule(**schedule)
  n = np.asarray(data.n)
  return lanes.choose_lanes(schedule_steps(n, **schedule),
                            min(clients, len(n)))


def _parts(config: ml_collections.ConfigDict) -> _Parts:
  """Every part of a run that needs no device, built from a resolved
  config."""
  if config.shard:
    mesh_shape(config.mesh.clients, config.mesh.model, jax.device_count())
  data = load_data(config)
  participation = PARTICIPATION.build(
      config.participation, 'config.participation',
      num_clients=data.num_clients, cohort_size=config.clients_per_round,
      # Label mixes of class labels; sequence tasks' mixes are simulated.
      label_counts=data.label_counts if data.train.y.ndim == 1 else None,
      seed=config.seed)
  model = MODELS.build(config.model, 'config.model',
                       num_classes=data.num_classes)
  task = TASKS.build(config.task, 'config.task', num_classes=data.num_classes)
  aggregator = build_aggregator(
      config.aggregator, 'config.aggregator',
      num_clients=config.clients_per_round, population=data.num_clients,
      participation=participation, apply_fn=model.apply,
      proxy=None if data.proxy_y is None else (data.proxy_x, data.proxy_y),
      validation=data.validation)
  client = make_client(model.apply,
                       build_optimizer(config.client.optimizer,
                                       'config.client.optimizer'),
                       batch_size=config.client.batch_size,
                       max_examples=data.max_examples,
                       local_steps=config.client.local_steps,
                       local_epochs=config.client.local_epochs,
                       objective=LOSSES.build(config.client.loss,
                                              'config.client.loss',
                                              task=task),
                       outputs=aggregator.reads.outputs,
                       local_schedule=LOCAL_SCHEDULES.build(
                           config.client.local_schedule,
                           'config.client.local_schedule'),
                       algorithm=CLIENT_ALGORITHMS.build(
                           config.client.algorithm,
                           'config.client.algorithm'),
                       lanes=config.client.lanes or choose_lanes(
                           config, data))
  server_update = (assign() if aggregator.output is Aggregate.MODEL else
                   optimizer_step(build_optimizer(
                       config.server.optimizer, 'config.server.optimizer')))
  attack = ATTACKS.build(config.attack.name, 'config.attack.name')
  schedules = [build_schedule(config[side].schedule,
                              f'config.{side}.schedule')
               for side in ('client', 'server')]
  message = MESSAGES.build(config.client.message, 'config.client.message')
  validate.parts(config, data, model, task, aggregator, attack, message)
  return _Parts(data, participation, model, task, client, aggregator,
                server_update, attack, *schedules, message)


def check(config: ml_collections.ConfigDict) -> None:
  """Every check of ``build`` (fields, numbers, component names and
  parameters, against the data), so a sweep can vet all its runs up front."""
  _parts(resolve(config))


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Validates the config and builds every part; all errors happen here.
  ``Experiment.config`` is the config resolved (``resolve``)."""
  config = resolve(config)
  parts = _parts(config)
  mesh = make_mesh(config.mesh.clients, config.mesh.model) if (
      config.shard) else None
  round_ = make_round(client=parts.client, aggregator=parts.aggregator,
                      server_update=parts.server_update,
                      participation=parts.participation, mesh=mesh,
                      attack=parts.attack,
                      byzantine_fraction=config.attack.fraction,
                      byzantine_ids=tuple(config.attack.ids),
                      client_schedule=parts.client_schedule,
                      server_schedule=parts.server_schedule,
                      message=parts.message,
                      redraw_share=config.attack.redraw_share)
  initial_state = _make_initial_state(
      parts.model, parts.client, parts.server_update, parts.aggregator,
      parts.participation, parts.data.num_clients)
  data = parts.data
  if on_host(config):  # the training examples stay in host memory
    data = replicate(data.replace(train=None), mesh).replace(train=data.train)
  else:
    data = replicate(data, mesh)
  return Experiment(config, data, parts.model,
                    parts.task, parts.client, round_, parts.server_update,
                    parts.aggregator, mesh, parts.participation,
                    initial_state)


# Fields a run may change when it resumes; any other change is a new run.
RESUMABLE_CHANGES = ('rounds', 'eval_every', 'eval_train', 'checkpoint_every',
                     'keep_checkpoints', 'halt_after', 'loss_explosion',
                     'shard', 'mesh.clients', 'mesh.model', 'progress')


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails when ``workdir`` holds a run of a different config (compared
  resolved, as its config.json was written)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  config = resolve(config)
  with open(path) as f:
    saved = _flatten(json.load(f))
  now = _flatten(json.loads(config.to_json_best_effort()))
  # A field added to fedround after the run started had its default then.
  defaults = _flatten(json.loads(config_lib.base_config().to_json()))
  saved = {**{k: v for k, v in defaults.items() if k in now}, **saved}
  changed = sorted(k for k in saved.keys() | now.keys()
                   if saved.get(k) != now.get(k)
                   and k not in RESUMABLE_CHANGES)
  if changed:
    raise ConfigError(
        f'{workdir} holds a run whose config differs in '
        f'{", ".join(changed)}; only {", ".join(RESUMABLE_CHANGES)} may change '
        'on resume; use a new workdir or delete this one')


def _read_metrics(path: str, up_to_round: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r['round'] <= up_to_round]


class _RunLog:
  """One run's workdir: its checkpoints, metrics (JSON lines in
  metrics.jsonl and TensorBoard events in tensorboard/) and best
  accuracy."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.summary_path = os.path.join(workdir, 'summary.json')
    self.primary = is_primary()  # writes the metrics and the summary

  def finished_summary(self, start: int) -> dict | None:
    """The summary of a run already trained to ``config.rounds``."""
    if start != self.config.rounds or not os.path.exists(self.summary_path):
      return None
    with open(self.summary_path) as f:
      summary = json.load(f)
    return summary if summary.get('rounds') == start else None

  def open(self, start: int):
    """Writes the config the run now follows, drops metric rows past
    ``start`` and opens the metrics file to append (the primary process;
    every process reads the history its divergence watch resumes from)."""
    history = _read_metrics(self.metrics_path, start)
    self.best = max((r['test_accuracy'] for r in history
                     if 'test_accuracy' in r), default=float('nan'))
    self.last_eval = next((r for r in reversed(history)
                           if 'test_accuracy' in r), {})
    self.watch = Watch(self.config.loss_explosion, self.config.halt_after,
                       history)
    sync('metrics read')
    if not self.primary:
      return
    with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
      f.write(self.config.to_json_best_effort(indent=2))
    with open(self.metrics_path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in history)
    self.log = open(self.metrics_path, 'a')
    # Rounds past ``start`` that an interrupted run logged are purged from
    # TensorBoard's view, as they are dropped from metrics.jsonl.
    import tensorboardX  # pylint: disable=import-outside-toplevel
    # A NaN metric (a round nobody trained in) is written as NaN, without
    # tensorboardX's warning for each one.
    std_logging.getLogger('tensorboardX.x2num').setLevel(std_logging.ERROR)
    # Named by the round it starts from too: the file name's time is in
    # seconds, and a resume within the second would replace the file.
    self.events = tensorboardX.SummaryWriter(
        os.path.join(self.workdir, 'tensorboard'),
        purge_step=start + 1 if start else None,
        filename_suffix=f'.from_round_{start}')

  def write(self, rows: list[dict]):
    if not self.primary:
      return
    self.log.writelines(json.dumps(r) + '\n' for r in rows)
    self.log.flush()
    for row in rows:
      for name, value in row.items():
        if name != 'round':
          self.events.add_scalar(name, value, row['round'])
    self.events.flush()

  def write_summary(self, summary: dict):
    if self.primary:
      with open(self.summary_path, 'w') as f:
        json.dump(summary, f, indent=2)

  def close(self):
    if self.primary:
      self.log.close()
      self.events.close()
    self.checkpoints.close()


# The fields vmapped replicas may differ in.
REPLICA_FIELDS = ('seed',) + tuple(TRACED_HPARAMS)


def replica_differences(a: ml_collections.ConfigDict,
                        b: ml_collections.ConfigDict) -> list[str]:
  """The fields, other than REPLICA_FIELDS and progress, where a and b
  differ."""
  fa = _flatten(json.loads(a.to_json_best_effort()))
  fb = _flatten(json.loads(b.to_json_best_effort()))
  return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)
                and k not in REPLICA_FIELDS + ('progress',))


def run(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Trains ``config`` in ``workdir``, resuming from its newest good
  checkpoint; holds the workdir (fedround.workdir) while it runs."""
  with hold(workdir):
    experiment = build(config)
    config = experiment.config
    check_resumable(config, workdir)
    return _train(experiment, [config], [workdir], replicas=False)[0]


def run_replicas(configs: list[ml_collections.ConfigDict],
                 workdirs: list[str]) -> list[RunResult]:
  """Trains runs that differ only in ``seed`` and TRACED_HPARAMS as one
  vmapped computation; each run gets its own workdir, metrics and
  checkpoints, as if it had been run alone, and the group resumes from the
  latest round every member has checkpointed."""
  with contextlib.ExitStack() as held:
    for workdir in workdirs:
      held.enter_context(hold(workdir))
    configs = [resolve(config) for config in configs]
    if on_host(configs[0]):
      raise ConfigError("replicas share one federation on the device; they "
                        "need config.data.placement='device'")
    experiment = build(configs[0])
    for config, workdir in zip(configs, workdirs):
      check(config)
      check_resumable(config, workdir)
      different = replica_differences(configs[0], config)
      if different:
        raise ConfigError(
            f'replicas must differ only in {", ".join(REPLICA_FIELDS)}; '
            f'{workdir} also differs in {", ".join(different)}')
    return _train(experiment, configs, workdirs, replicas=True)


class Chunk(NamedTuple):
  """What the periodic actions see after a chunk of rounds."""
  round: int            # rounds completed
  active: int           # rounds this chunk trained
  state: ServerState
  store: Any
  metrics: dict         # per-round metrics, [active(, replicas)] each
  train_seconds: float  # the run's training time so far


class Periodic(NamedTuple):
  """``action(chunk)`` after each chunk that ends on a multiple of
  ``every`` rounds, and after the last."""
  every: int
  action: Callable[[Chunk], None]


def _loop(compiled, state, store, data, start: int, rounds: int,
          chunk: int, actions: list[Periodic], feed=None):
  """Calls ``compiled`` (chunk rounds a call) from round ``start`` to
  ``rounds``, and after each call the actions that are due, in order; with
  the federation on the host, ``feed`` (host.HostFeed) gives each call its
  cohorts' examples. Returns the state, the store, the rounds trained and
  the seconds."""
  round_, train_seconds = start, 0.0
  while round_ < rounds:
    active = min(chunk, rounds - round_)
    t0 = time.perf_counter()
    trains = () if feed is None else (feed.take(state),)
    state, store, metrics = compiled(state, store, data, jnp.int32(active),
                                     *trains)
    metrics = jax.device_get(metrics)
    train_seconds += time.perf_counter() - t0
    round_ += active
    done = Chunk(round_, active, state, store, metrics, train_seconds)
    for periodic in actions:
      if round_ % periodic.every == 0 or round_ == rounds:
        periodic.action(done)
  return state, store, round_, train_seconds


def _train(experiment: Experiment, configs, workdirs,
           replicas: bool) -> list[RunResult]:
  config = configs[0]
  logs = [_RunLog(c, w) for c, w in zip(configs, workdirs)]
  # A checkpoint holds the server state and the per-client store.
  states = [dict(zip(('server', 'clients'), experiment.init_state(c)))
            for c in configs]
  start, states = restore_newest_good([log.checkpoints for log in logs],
                                      states)
  if start > config.rounds:
    raise RunError(
        f'{", ".join(workdirs)}: {start} rounds are already trained, more '
        f'than config.rounds={config.rounds}; ask for {start} or more, or '
        'use a new workdir')
  done = [log.finished_summary(start) for log in logs]
  if all(done):  # a finished run: keep its summary and timings
    for log in logs:
      log.checkpoints.close()
    return [RunResult(s['server'], s['clients'], summary)
            for s, summary in zip(states, done)]
  if start and is_primary():
    tqdm.tqdm.write(f'{", ".join(workdirs)}: resuming after round {start}, '
                    f'training on to round {config.rounds}', file=sys.stderr)
  for log in logs:
    log.open(start)
  if replicas:
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    state, store = place(stacked['server'], stacked['clients'],
                         experiment.mesh, experiment.data.num_clients,
                         replicas=True)
    unstack = lambda tree, r: jax.tree.map(lambda x: x[r], tree)
  else:
    state, store = states[0]['server'], states[0]['clients']
    unstack = lambda tree, r: tree
  del states

  chunk = min(math.gcd(config.eval_every, config.checkpoint_every),
              config.rounds)
  rounds_fn = make_rounds(experiment.round.fn, chunk, replicas)
  evaluate = make_evaluate(experiment.model.apply, experiment.task,
                           mesh=experiment.mesh)
  evaluate_clients = make_evaluate_clients(experiment.model.apply,
                                           experiment.task,
                                           mesh=experiment.mesh)
  if replicas:
    evaluate = jax.jit(jax.vmap(evaluate, in_axes=(0, None, None)))
    evaluate_clients = jax.jit(jax.vmap(evaluate_clients,
                                        in_axes=(0, None)))
  data, feed, trains = experiment.data, None, ()
  if on_host(config):
    rows = host.capacity(data.train, experiment.round.cohort_buffer)
    feed = host.HostFeed(
        data.train, jax.jit(experiment.round.cohorts, static_argnums=1),
        chunk, rows, lambda packed: replicate(packed, experiment.mesh))
    trains = (host.packed_shapes(data.train, chunk, rows, experiment.mesh),)
    data = data.replace(train=None)

  t0 = time.perf_counter()
  compiled = rounds_fn.lower(state, store, data, jnp.int32(chunk),
                             *trains).compile()
  compile_seconds = time.perf_counter() - t0
  bar = tqdm.tqdm(total=config.rounds, initial=start, unit='round',
                  disable=not (config.progress and is_primary()),
                  dynamic_ncols=True, leave=None)
  scores = {}  # the last evaluation, until the logging action writes it

  def evaluate_model(done: Chunk):
    scores['test'] = evaluate(done.state.params, data.test_x, data.test_y)
    if config.eval_train:
      scores['global_train'] = evaluate_clients(done.state.params,
                                                data.train)

  def log_rounds(done: Chunk):
    """One metrics row per round and replica, the evaluation on the last;
    the divergence watch sees every row."""
    evaluated = jax.device_get(scores)
    scores.clear()
    for r, log in enumerate(logs):
      rows = [{'round': done.round - done.active + i + 1,
               **{k: float(unstack(v[i], r)) for k, v in done.metrics.items()}}
              for i in range(done.active)]
      if evaluated:
        log.last_eval = {
            f'{split}_{name}': float(unstack(value, r))
            for split, values in evaluated.items()
            for name, value in zip(('loss', 'accuracy'), values)}
        rows[-1].update(log.last_eval)
        log.best = np.nanmax([log.best, log.last_eval['test_accuracy']])
      for row in rows:
        log.watch.observe(row)
        if row['unhealthy_rounds'] == 1 and log.primary:
          logging.warning('%s: round %d: %s', log.workdir, row['round'],
                          log.watch.reason)
      log.write(rows)

  def checkpoint(done: Chunk):
    for r, log in enumerate(logs):
      # A streak of unhealthy rounds is not saved over the last good step.
      if log.watch.streak == 0:
        log.checkpoints.save(done.round, {'server': unstack(done.state, r),
                                          'clients': unstack(done.store, r)})

  def show_progress(done: Chunk):
    bar.update(done.active)
    warnings = sorted({l.watch.reason for l in logs if l.watch.streak})
    accuracy = np.mean([l.last_eval.get('test_accuracy', np.nan)
                        for l in logs])
    bar.set_postfix(
        loss=f'{np.mean(done.metrics["train_loss"][-1]):.4f}',
        acc=f'{accuracy:.4f}',
        rps=f'{(done.round - start) / max(done.train_seconds, 1e-9):.1f}',
        **({'warn': '; '.join(warnings)} if warnings else {}))

  def halt(done: Chunk):
    halted = [log for log in logs if log.watch.halted]
    if halted:
      bar.close()
      for log in logs:
        log.close()
      log = halted[0]
      kept = max(log.checkpoints.steps(), default=None)
      raise RunError(
          f'{log.workdir}: stopped after round {log.watch.halted_at}: '
          f'{log.watch.halt_reason}, {config.halt_after} rounds in a row '
          f'(config.halt_after={config.halt_after}); '
          + (f'the last good checkpoint, round {kept}, is kept'
             if kept else 'no round was good enough to checkpoint'))

  try:
    state, store, round_, train_seconds = _loop(
        compiled, state, store, data, start, config.rounds, chunk, [
            Periodic(config.eval_every, evaluate_model),
            Periodic(1, log_rounds),
            Periodic(config.checkpoint_every, checkpoint),
            Periodic(1, show_progress),
            Periodic(1, halt)], feed)
  finally:
    if feed is not None:
      feed.close()
  bar.close()

  results = []
  for r, log in enumerate(logs):
    log.close()
    summary = {
        'rounds': round_,
        'resumed_from': start,
        'final_test_accuracy': log.last_eval.get('test_accuracy'),
        'final_test_loss': log.last_eval.get('test_loss'),
        'best_test_accuracy': None if np.isnan(log.best) else float(log.best),
        'compile_seconds': round(compile_seconds, 3),
        'train_seconds': round(train_seconds, 3),
        'rounds_per_second': round(
            (round_ - start) / max(train_seconds, 1e-9), 2),
        'replicas': len(logs),
        'devices': 1 if experiment.mesh is None else experiment.mesh.size,
        'mesh': {} if experiment.mesh is None else dict(experiment.mesh.shape),
        'data': experiment.data.describe(),
        **({} if feed is None else {
            'placement': 'host',
            'chunks_prefetched': feed.prefetched,
            'input_wait_seconds': round(feed.wait_seconds, 3)}),
    }
    log.write_summary(summary)
    results.append(RunResult(unstack(state, r), unstack(store, r), summary))
  return results


def format_summary(summary: dict) -> str:
  acc = summary['final_test_accuracy']
  return '\n'.join([
      f'rounds {summary["resumed_from"]} -> {summary["rounds"]} on '
      f'{summary["devices"]} device(s)'
      + (f' ({" x ".join(f"{k}={v}" for k, v in summary["mesh"].items())})'
         if len(summary.get('mesh', {})) > 1 else '')
      + f'; data: {summary["data"]}',
      f'final test accuracy {acc if acc is None else f"{acc:.4f}"}, best '
      f'{summary["best_test_accuracy"]}, final test loss '
      f'{summary["final_test_loss"]}',
      f'compile {summary["compile_seconds"]:.2f}s, train '
      f'{summary["train_seconds"]:.2f}s, {summary["rounds_per_second"]} '
      'rounds/s',
  ])
