"""run(config, workdir): build every part from the config, then loop
``state, metrics = rounds(state, data, num_active)`` with evaluation, JSON-lines
metrics, Orbax checkpoints and resumption from the latest checkpoint."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from fedround import config as config_lib
from fedround.aggregators import build_aggregator
from fedround.client import Client, make_client
from fedround.data import DATASETS, PARTICIPATION, FederatedData
from fedround.models import MODELS
from fedround.optimizers import build_optimizer
from fedround.rounds import (Round, make_evaluate, make_mesh, make_round,
                             make_rounds, replicate)
from fedround.server import ServerState


class Experiment(NamedTuple):
  """Every part of a run, built from a config, placed on the mesh."""
  config: ml_collections.ConfigDict
  data: FederatedData
  model: nn.Module
  client: Client
  round: Round
  server_optimizer: Any
  aggregator: Any
  mesh: Any

  def init_state(self) -> ServerState:
    init_key, run_key = jax.random.split(jax.random.PRNGKey(self.config.seed))
    params = self.model.init(init_key, jnp.asarray(self.data.x[0, :1]))
    state = ServerState(
        round=jnp.zeros((), jnp.int32), params=params,
        opt_state=self.server_optimizer.init(params),
        agg_state=self.aggregator.init(params), client_state=(),
        key=run_key)
    return replicate(state, self.mesh)


class RunResult(NamedTuple):
  state: ServerState
  summary: dict


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Validates the config and builds every part; all errors happen here."""
  config_lib.validate(config)
  data_kwargs = {k: v for k, v in config.data.items() if k != 'name'}
  data = DATASETS.call(config.data.name, data_kwargs, 'config.data')
  participation = PARTICIPATION.build(
      config.participation, 'config.participation',
      num_clients=data.num_clients, cohort_size=config.clients_per_round)
  model = MODELS.build(config.model, 'config.model',
                       num_classes=data.num_classes)
  client_optimizer = build_optimizer(config.client.optimizer,
                                     config.client.learning_rate,
                                     'config.client.optimizer')
  client = make_client(model.apply, client_optimizer,
                       batch_size=config.client.batch_size,
                       max_examples=data.max_examples,
                       local_steps=config.client.local_steps,
                       local_epochs=config.client.local_epochs)
  aggregator = build_aggregator(config.aggregator, 'config.aggregator')
  server_optimizer = build_optimizer(config.server.optimizer,
                                     config.server.learning_rate,
                                     'config.server.optimizer')
  mesh = make_mesh() if config.shard else None
  round_ = make_round(client=client, aggregator=aggregator,
                      server_optimizer=server_optimizer,
                      participation=participation, mesh=mesh)
  return Experiment(config, replicate(data, mesh), model, client, round_,
                    server_optimizer, aggregator, mesh)


def _read_metrics(path: str, up_to_round: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r['round'] <= up_to_round]


def run(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint."""
  experiment = build(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))

  state = experiment.init_state()
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
  start = int(state.round)

  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  history = _read_metrics(metrics_path, start)
  with open(metrics_path, 'w') as f:  # drop rows past the checkpoint
    f.writelines(json.dumps(r) + '\n' for r in history)

  chunk = min(math.gcd(config.eval_every, config.checkpoint_every),
              config.rounds)
  rounds_fn = make_rounds(experiment.round.fn, chunk)
  evaluate = make_evaluate(experiment.model.apply)
  data = experiment.data

  t0 = time.perf_counter()
  compiled = rounds_fn.lower(state, data, jnp.int32(chunk)).compile()
  compile_seconds = time.perf_counter() - t0
  best = max((r['test_accuracy'] for r in history if 'test_accuracy' in r),
             default=float('nan'))
  last_eval = next((r for r in reversed(history) if 'test_accuracy' in r), {})
  bar = tqdm.tqdm(total=config.rounds, initial=start, unit='round',
                  disable=not config.progress, dynamic_ncols=True)
  train_seconds, round_ = 0.0, start
  with open(metrics_path, 'a') as log:
    while round_ < config.rounds:
      active = min(chunk, config.rounds - round_)
      t0 = time.perf_counter()
      state, metrics = compiled(state, data, jnp.int32(active))
      metrics = jax.device_get(metrics)
      train_seconds += time.perf_counter() - t0
      rows = [{'round': round_ + i + 1,
               **{k: float(v[i]) for k, v in metrics.items()}}
              for i in range(active)]
      round_ += active
      if round_ % config.eval_every == 0 or round_ == config.rounds:
        loss, accuracy = evaluate(state.params, data.test_x, data.test_y)
        last_eval = {'test_loss': float(loss),
                     'test_accuracy': float(accuracy)}
        rows[-1].update(last_eval)
        best = np.nanmax([best, last_eval['test_accuracy']])
      log.writelines(json.dumps(r) + '\n' for r in rows)
      log.flush()
      if round_ % config.checkpoint_every == 0 or round_ == config.rounds:
        manager.save(round_, args=ocp.args.StandardSave(state))
      bar.update(active)
      bar.set_postfix(loss=f'{rows[-1]["train_loss"]:.4f}',
                      acc=f'{last_eval.get("test_accuracy", float("nan")):.4f}',
                      rps=f'{(round_ - start) / max(train_seconds, 1e-9):.1f}')
  bar.close()
  manager.wait_until_finished()
  manager.close()

  summary = {
      'rounds': round_,
      'resumed_from': start,
      'final_test_accuracy': last_eval.get('test_accuracy'),
      'final_test_loss': last_eval.get('test_loss'),
      'best_test_accuracy': None if np.isnan(best) else float(best),
      'compile_seconds': round(compile_seconds, 3),
      'train_seconds': round(train_seconds, 3),
      'rounds_per_second': round((round_ - start) / max(train_seconds, 1e-9),
                                 2),
      'devices': 1 if experiment.mesh is None else experiment.mesh.size,
      'round_traces': len(experiment.round.traces),
      'data': data.describe(),
  }
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return RunResult(state, summary)


def format_summary(summary: dict) -> str:
  acc = summary['final_test_accuracy']
  return '\n'.join([
      f'rounds {summary["resumed_from"]} -> {summary["rounds"]} on '
      f'{summary["devices"]} device(s); data: {summary["data"]}',
      f'final test accuracy {acc if acc is None else f"{acc:.4f}"}, best '
      f'{summary["best_test_accuracy"]}, final test loss '
      f'{summary["final_test_loss"]}',
      f'compile {summary["compile_seconds"]:.2f}s, train '
      f'{summary["train_seconds"]:.2f}s, {summary["rounds_per_second"]} '
      'rounds/s',
  ])
