"""Model soups of the clients' fine-tuned models during a federated run
(Wortsman et al., ICML 2022; scripts/soup.py): every client fine-tunes the
global model with its local training, and the server compares the global
model, the best single client model, the uniform and greedy soups and the
ensembles of the client models voting at prediction time (majority vote and
run-off election, Rezaei et al., ICML 2023), choosing on its proxy set and
scoring on the test split.

run_soups(config, workdir, every, seeds) trains in stages and takes the
soups after each."""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedround import train
from fedround.client import Broadcast, ClientInput
from fedround.analysis.ensembles import majority_vote, runoff_election
from fedround.registry import ConfigError
from fedround.rounds import make_evaluate
from fedround.analysis.soups import greedy_soup, uniform_soup


SOUP_STREAM = 0x534f55  # folded into the seed's key: the soups' client keys
# Name -> vote of the N client models' logits [models, examples, classes].
ENSEMBLES = {'majority_vote': majority_vote,
             'runoff_election': runoff_election}
# Each method's model; the ENSEMBLES vote the N client models' predictions;
# 'mean_client' is the mean accuracy of the N client models themselves, not
# a model.
METHODS = ('global', 'best_single', 'uniform_soup', 'greedy_soup',
           *ENSEMBLES, 'mean_client')


def stage_key(seed: int, round_: int) -> jax.Array:
  """The key of the client models fine-tuned at ``round_`` of seed
  ``seed``'s run."""
  return jax.random.fold_in(
      jax.random.fold_in(jax.random.PRNGKey(seed), SOUP_STREAM), round_)


def client_models(experiment, state, store, key):
  """Every client's model fine-tuned from the global model ``state.params``
  by its local training in a round (``experiment.client.train``, client i
  with key ``fold_in(key, i)``, its row of the per-client ``store`` and the
  algorithm's server-side ``state.shared``): the pytree ``params + delta_i``
  with a leading axis of the N clients."""
  data = experiment.data
  ids = jnp.arange(data.num_clients)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
  broadcast = Broadcast(
      state.params, jnp.float32(experiment.config.client.learning_rate),
      state.shared, jax.tree.map(jnp.asarray, data.train))
  deltas = experiment.client.train(
      broadcast, ClientInput(ids, keys, store, ids >= 0))[0].delta
  return jax.tree.map(jnp.add, state.params, deltas)


def client_logits(apply_fn, models, x: jax.Array,
                  batch_size: int = 1024) -> jax.Array:
  """[models, examples, classes]: the logits of each of ``models`` (a pytree
  with a leading axis of models) on ``x``, in batches of ``batch_size``."""
  logits_of = lambda model: jax.lax.map(
      lambda example: apply_fn(model, example[None])[0], x,
      batch_size=min(batch_size, len(x)))
  return jax.lax.map(logits_of, models)


def ensemble_accuracies(logits: jax.Array, y: jax.Array
                        ) -> dict[str, jax.Array]:
  """The accuracy on labels ``y`` of each of ENSEMBLES voting ``logits``
  [models, examples, classes]."""
  return {name: jnp.mean(vote(logits) == y)
          for name, vote in ENSEMBLES.items()}


def make_soup_metrics(experiment) -> Callable[[Any, Any, jax.Array], dict]:
  """``(state, store, key) -> {metric: number}``: the accuracy on the proxy
  set and on the test split of each of METHODS
  (``<method>_proxy_accuracy``, ``<method>_test_accuracy``) and
  ``greedy_soup_ingredients``, for the client models fine-tuned from the
  global model ``state.params`` with ``key`` (``client_models``).
  The best single model and the greedy soup (Wortsman et al., ICML 2022)
  are chosen by proxy accuracy. Jitted once; runs on one device."""
  data = jax.device_get(experiment.data)
  if data.proxy_y is None:
    raise ConfigError('config.data.proxy_fraction must be > 0: the best '
                      'single model and the greedy soup are chosen on the '
                      'server proxy set (e.g. 0.05 of the test split)')
  apply_fn = experiment.model.apply
  proxy_evaluate = make_evaluate(apply_fn, experiment.task,
                                 len(data.proxy_y))
  test_evaluate = make_evaluate(apply_fn, experiment.task,
                                min(1024, len(data.test_y)))

  @jax.jit
  def metrics(state, store, data, key):
    # The data is an argument rather than a constant baked into the jit.
    models = client_models(experiment._replace(data=data), state, store, key)
    params = state.params
    proxy = lambda p: proxy_evaluate(p, data.proxy_x, data.proxy_y)[1]
    test = lambda p: test_evaluate(p, data.test_x, data.test_y)[1]
    # Each client model's logits, once per split: its own accuracy (the
    # proxy scores, mean_client) and the ensembles' votes.
    splits = {'proxy': (data.proxy_x, data.proxy_y),
              'test': (data.test_x, data.test_y)}
    logits = {split: client_logits(apply_fn, models, x)
              for split, (x, _) in splits.items()}
    client_accuracy = {
        split: jnp.mean(jnp.argmax(logits[split], -1) == y, axis=1)
        for split, (_, y) in splits.items()}
    scores = client_accuracy['proxy']
    greedy, ingredients, _ = greedy_soup(models, proxy)
    chosen = {'global': params,
              'best_single': jax.tree.map(lambda m: m[jnp.argmax(scores)],
                                          models),
              'uniform_soup': uniform_soup(models),
              'greedy_soup': greedy}
    out = {f'{name}_{split}_accuracy': accuracy(model)
           for name, model in chosen.items()
           for split, accuracy in (('proxy', proxy), ('test', test))}
    for split, (_, y) in splits.items():
      out.update({f'{name}_{split}_accuracy': accuracy
                  for name, accuracy in ensemble_accuracies(
                      logits[split], y).items()})
      out[f'mean_client_{split}_accuracy'] = jnp.mean(client_accuracy[split])
    out.update(greedy_soup_ingredients=jnp.sum(ingredients))
    return out

  return lambda state, store, key: {
      name: value.item() for name, value in jax.device_get(metrics(
          *jax.device_get((state, store)), data, key)).items()}


def soup_stages(rounds: int, every: int) -> list[int]:
  """The rounds after which soups are taken: every, 2 every, ..., rounds."""
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ConfigError(f'every must be a positive integer (rounds between '
                      f'soups), got {every!r}')
  return list(range(every, rounds, every)) + [rounds]


def _read_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_soups(config: ml_collections.ConfigDict, workdir: str, every: int,
              seeds: Sequence[int]) -> list[dict]:
  """Trains seed s of ``config`` in ``workdir/seed_<s>`` in stages of
  ``every`` rounds (the last stage ends at ``config.rounds``), appends the
  soup metrics of the global model after each stage to
  ``workdir/soups.jsonl`` as ``{'round', 'seed', ...}`` (skipping stages
  already there, so a rerun resumes), then writes ``soups.png`` and
  ``soups.md``. Returns the rows of these stages and seeds."""
  stages = soup_stages(config.rounds, every)
  if (not seeds or len(set(seeds)) != len(seeds) or not all(
      isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
    raise ConfigError(f'seeds must be distinct integers, at least one; got '
                      f'{list(seeds)}')
  soup_metrics = make_soup_metrics(train.build(config))
  path = os.path.join(workdir, 'soups.jsonl')
  rows = _read_rows(path)
  done = {(row['seed'], row['round']) for row in rows}
  for seed in seeds:
    run_dir = os.path.join(workdir, f'seed_{seed}')
    for stage in stages:
      if (seed, stage) in done:
        continue
      staged = copy.deepcopy(config)
      staged.seed, staged.rounds = seed, stage
      result = train.run(staged, run_dir)
      if result.summary['rounds'] != stage:
        raise ConfigError(f'{run_dir} holds a run past round {stage} that '
                          f'{path} has no soups for; delete {run_dir}')
      row = {'round': stage, 'seed': seed,
             **soup_metrics(result.state, result.store,
                            stage_key(seed, stage))}
      with open(path, 'a') as f:
        f.write(json.dumps(row) + '\n')
      rows.append(row)
  planned = [row for row in rows
             if row['seed'] in seeds and row['round'] in stages]
  plot_soups(planned, os.path.join(workdir, 'soups.png'))
  with open(os.path.join(workdir, 'soups.md'), 'w') as f:
    f.write(soups_markdown(planned, config.rounds) + '\n')
  return planned


def _by_round(rows: list[dict], key: str) -> tuple[list[int], list[list]]:
  rounds = sorted({row['round'] for row in rows})
  return rounds, [[row[key] for row in rows if row['round'] == r]
                  for r in rounds]


def plot_soups(rows: list[dict], path: str) -> None:
  """Test and proxy accuracy of each of METHODS against round: the mean
  over seeds, shaded from the smallest to the largest seed."""
  fig = Figure(figsize=(10, 4), layout='constrained')
  colors = matplotlib.colormaps['tab10']
  for ax, split in zip(fig.subplots(1, 2), ('test', 'proxy')):
    for i, method in enumerate(METHODS):
      rounds, values = _by_round(rows, f'{method}_{split}_accuracy')
      ax.plot(rounds, [np.mean(v) for v in values], color=colors(i),
              label=method, linestyle=(':' if method == 'mean_client' else
                                       '--' if method in ENSEMBLES else '-'),
              marker='o', markersize=3)
      ax.fill_between(rounds, [min(v) for v in values],
                      [max(v) for v in values], color=colors(i), alpha=0.2)
    ax.set_title(f'{split} accuracy', fontsize='medium')
    ax.set_xlabel('round')
    ax.set_ylabel('accuracy')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  seeds = len({row['seed'] for row in rows})
  fig.suptitle(f'Soups and ensembles of the client models: mean over '
               f'{seeds} seed(s), shaded min to max')
  fig.savefig(path, dpi=120)


def _mean_pm_std(values: list[float], digits: int = 4) -> str:
  if len(values) < 2:
    return f'{np.mean(values):.{digits}f}'
  return f'{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}'


def soups_markdown(rows: list[dict], final_round: int) -> str:
  """Each method's accuracy at ``final_round``, mean ± sample std over
  seeds, and the number of client models in each soup or ensemble."""
  final = [row for row in rows if row['round'] == final_round]
  ingredients = {'best_single': '1', 'uniform_soup': 'all', 'greedy_soup':
                 _mean_pm_std([r['greedy_soup_ingredients'] for r in final],
                              1), **{name: 'all' for name in ENSEMBLES}}
  lines = [f'Round {final_round}, {len(final)} seed(s): mean ± sample std '
           '(ddof=1). The best single model and the greedy soup are chosen '
           'on the proxy set; the test split is disjoint from it. '
           'majority_vote and runoff_election: the client models voting '
           'their predictions (Rezaei et al., ICML 2023). mean_client: the '
           'mean accuracy of the client models.', '',
           '| method | test accuracy | proxy accuracy | ingredients |',
           '|---|---|---|---|']
  for method in METHODS:
    lines.append(f'| {method} | ' + ' | '.join(
        _mean_pm_std([r[f'{method}_{split}_accuracy'] for r in final])
        for split in ('test', 'proxy')) +
        f' | {ingredients.get(method, "-")} |')
  return '\n'.join(lines)
