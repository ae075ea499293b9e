"""Soups and voting ensembles of the clients' fine-tuned models during a run
(scripts/soup.py): end to end with resumption, each metric against a hand
computation, ensembles of one or identical models, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fisher
from conftest import assert_trees_close
from fedround import train
from fedround.analysis.client_soups import (
    ENSEMBLES, METHODS, client_logits, client_models, ensemble_accuracies,
    make_soup_metrics, run_soups, soup_stages, stage_key)
from fedround.analysis.ensembles import majority_vote, runoff_election
from fedround.registry import ConfigError
from fedround.rounds import make_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_soup_config(rounds=3):
  """Digits over 6 clients, logistic regression, a proxy set."""
  config = fisher.get_config()
  config.data = dict(name='digits', num_clients=6, alpha=0.5, seed=0,
                     proxy_fraction=0.1)
  config.model = 'logistic'
  config.rounds = rounds
  config.clients_per_round = 3
  config.client.local_steps = 5
  config.aggregator = 'weighted_mean'
  config.eval_every = 1
  config.checkpoint_every = 1
  config.progress = False
  return config


def read_rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_run_soups_end_to_end_and_resumes(tmp_path):
  rows = run_soups(tiny_soup_config(rounds=3), str(tmp_path), every=2,
                   seeds=[0, 1])
  assert [(r['seed'], r['round']) for r in rows] == [
      (0, 2), (0, 3), (1, 2), (1, 3)]
  assert read_rows(tmp_path / 'soups.jsonl') == rows
  for row in rows:
    assert row['greedy_soup_proxy_accuracy'] >= (
        row['best_single_proxy_accuracy'])
    assert 1 <= row['greedy_soup_ingredients'] <= 6
    assert all(0 <= row[f'{m}_{split}_accuracy'] <= 1 for m in METHODS
               for split in ('test', 'proxy'))
    metrics = read_rows(tmp_path / f'seed_{row["seed"]}' / 'metrics.jsonl')
    logged = next(m for m in metrics if m['round'] == row['round'])
    np.testing.assert_allclose(row['global_test_accuracy'],
                               logged['test_accuracy'], atol=1e-6)
  assert (tmp_path / 'soups.png').stat().st_size > 0
  table = (tmp_path / 'soups.md').read_text()
  assert all(f'| {m} |' in table for m in METHODS) and 'Round 3, 2' in table
  assert '| majority_vote |' in table and '| runoff_election |' in table

  # A rerun skips the stages done and redoes a lost one identically.
  with open(tmp_path / 'soups.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows[:-1])
  again = run_soups(tiny_soup_config(rounds=3), str(tmp_path), every=2,
                    seeds=[0, 1])
  assert again == rows
  assert read_rows(tmp_path / 'soups.jsonl') == rows


def test_soup_metrics_of_the_client_models():
  config = tiny_soup_config()
  experiment = train.build(config)
  state, store = experiment.init_state()  # placed on the mesh
  params = state.params
  on_host = experiment._replace(data=train.load_data(config))
  models_of = jax.jit(lambda k: client_models(on_host, *jax.device_get(
      (state, store)), k))
  models = models_of(stage_key(0, 2))
  assert jax.tree.leaves(models)[0].shape[0] == 6
  assert_trees_close(models_of(stage_key(0, 2)), models, atol=0, rtol=0)
  other = models_of(stage_key(0, 3))
  assert not np.allclose(jax.tree.leaves(other)[0],
                         jax.tree.leaves(models)[0])

  metrics = make_soup_metrics(experiment)(state, store, stage_key(0, 2))
  evaluate = make_evaluate(experiment.model.apply, experiment.task)
  data = on_host.data
  test = lambda p: float(evaluate(p, data.test_x, data.test_y)[1])
  proxy = [float(evaluate(jax.tree.map(lambda m: m[i], models), data.proxy_x,
                          data.proxy_y)[1]) for i in range(6)]
  best = jax.tree.map(lambda m: m[int(np.argmax(proxy))], models)
  expected = {
      'global_test_accuracy': test(params),
      'uniform_soup_test_accuracy': test(
          jax.tree.map(lambda m: np.mean(m, 0), models)),
      'best_single_proxy_accuracy': max(proxy),
      'best_single_test_accuracy': test(best),
      'mean_client_proxy_accuracy': np.mean(proxy)}
  for split, x, y in (('test', data.test_x, data.test_y),
                      ('proxy', data.proxy_x, data.proxy_y)):
    logits = jnp.stack([experiment.model.apply(
        jax.tree.map(lambda m: m[i], models), x) for i in range(6)])
    expected[f'majority_vote_{split}_accuracy'] = np.mean(
        np.asarray(majority_vote(logits)) == y)
    expected[f'runoff_election_{split}_accuracy'] = np.mean(
        np.asarray(runoff_election(logits)) == y)
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, atol=1e-6, err_msg=name)
  assert metrics['greedy_soup_proxy_accuracy'] >= max(proxy)


def test_ensembles_of_one_or_identical_models_are_that_model():
  """One client model, or six copies of it: each ensemble predicts as the
  model does, in any batch size (37 does not divide the test split)."""
  config = tiny_soup_config()
  experiment = train.build(config)
  data = train.load_data(config)
  params = jax.device_get(experiment.init_state()[0].params)
  apply_fn = experiment.model.apply
  accuracy = float(make_evaluate(apply_fn, experiment.task)(
      params, data.test_x, data.test_y)[1])
  assert len(data.test_y) % 37 and 0 < accuracy < 1
  for copies in (1, 6):
    models = jax.tree.map(lambda p: jnp.stack([p] * copies), params)
    for batch_size in (1024, 37):
      accuracies = ensemble_accuracies(
          client_logits(apply_fn, models, data.test_x, batch_size),
          data.test_y)
      assert list(accuracies) == list(ENSEMBLES)
      for name, value in accuracies.items():
        np.testing.assert_allclose(value, accuracy, atol=1e-6,
                                   err_msg=f'{name}, {copies} copies')


def test_run_soups_rejects_bad_input(tmp_path):
  config = tiny_soup_config()
  config.data.proxy_fraction = 0.0
  with pytest.raises(ConfigError, match='proxy_fraction must be > 0'):
    run_soups(config, str(tmp_path), every=2, seeds=[0])
  for every in (0, -1, 1.5):
    with pytest.raises(ConfigError, match='every must be a positive integer'):
      run_soups(tiny_soup_config(), str(tmp_path), every=every, seeds=[0])
  for seeds in ([], [0, 0]):
    with pytest.raises(ConfigError, match='seeds must be distinct integers'):
      run_soups(tiny_soup_config(), str(tmp_path), every=2, seeds=seeds)
  assert soup_stages(10, 4) == [4, 8, 10] and soup_stages(3, 5) == [3]
  assert not os.listdir(tmp_path)



def test_soup_script_with_client_state(tmp_path):
  """scripts/soup.py on SCAFFOLD, whose clients keep a control variate;
  the client models are fine-tuned with their own rows of the store, so
  zeroing the store changes them."""
  workdir = tmp_path / 'soups'
  result = subprocess.run(
      [sys.executable, 'scripts/soup.py', '--config',
       'experiments/soups.py:local_steps=2', '--workdir', str(workdir),
       '--every', '2', '--config.rounds=2', '--config.model=logistic',
       '--config.data.num_clients=6', '--config.clients_per_round=3',
       '--config.client.algorithm=scaffold', '--config.eval_every=2',
       '--config.checkpoint_every=2', '--config.progress=False'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '| greedy_soup |' in result.stdout

  config = tiny_soup_config(rounds=2)
  config.client.algorithm = 'scaffold'
  trained = train.run(config, str(tmp_path / 'run'))
  assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(trained.store))
  on_host = train.build(config)._replace(data=train.load_data(config))
  state, store = jax.device_get((trained.state, trained.store))
  models = jax.jit(lambda store: client_models(on_host, state, store,
                                               stage_key(0, 2)))
  with_store = models(store)
  without = models(jax.tree.map(np.zeros_like, store))
  assert not np.allclose(jax.tree.leaves(with_store)[0],
                         jax.tree.leaves(without)[0])
