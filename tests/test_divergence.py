"""Divergence is seen, not hidden: non-finite hyper-parameters are refused
at config time, a non-finite aggregate never moves the model, and a run that
diverges stops with its reason and round, keeping its last good checkpoint."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_digits
from fedround import train
from fedround.aggregators import AGGREGATORS
from fedround.aggregators.base import stateless
from fedround.divergence import Watch
from fedround.registry import ConfigError
from fedround.rounds import make_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(**values):
  return {'round': 0, 'participants': 4, 'nonfinite_excluded': 0, 'aggregate_refused': 0,
          'train_loss': 1.0, **values}


def test_watch_counts_unhealthy_streaks_and_halts():
  watch = Watch(loss_explosion=10.0, halt_after=3, history=[])
  rows = [_row(train_loss=2.0), _row(train_loss=0.5),
          _row(train_loss=5.1),                     # > 10 x 0.5: exploded
          _row(nonfinite_excluded=4, train_loss=math.nan),
          _row(train_loss=1.0),                     # healthy again
          _row(aggregate_refused=1), _row(aggregate_refused=1),
          _row(nonfinite_excluded=4, train_loss=math.nan)]
  streaks = []
  for row in rows:
    watch.observe(row)
    streaks.append(row['unhealthy_rounds'])
  assert streaks == [0, 0, 1, 2, 0, 1, 2, 3]
  assert watch.halted and watch.reason == 'every client sent a non-finite update'
  # A healthy round later in the same chunk keeps why it halted (a run of
  # experiments/frl.py once stopped with the reason None).
  watch.observe(_row(train_loss=1.0))
  assert watch.reason is None and watch.halted
  assert watch.halt_reason == 'every client sent a non-finite update'
  # No participant (a cyclic lull) is no failure; a resumed watch goes on.
  resumed = Watch(10.0, 3, history=rows[:4])
  assert resumed.streak == 2 and resumed.lowest_loss == 0.5
  resumed.observe(_row(participants=0, train_loss=math.nan))
  assert resumed.streak == 0


@pytest.mark.parametrize('field, value', [
    ('client.learning_rate', math.inf), ('server.learning_rate', math.nan),
    ('data.alpha', math.inf), ('client.optimizer', 'sgd(momentum=1e999)'),
    ('aggregator', 'geometric_median(nu=1e999)'), ('loss_explosion', 1.0),
    ('halt_after', 0),
])
def test_non_finite_or_bad_hyper_parameters_fail_at_config_time(field,
                                                                 value):
  config = tiny_digits()
  parent, _, name = field.rpartition('.')
  (config[parent] if parent else config)[name] = value
  with pytest.raises(ConfigError, match=field.split('.')[-1]):
    train.check(config)


if 'overflowing_mean' not in AGGREGATORS:
  # A rule whose finite inputs overflow: every coordinate becomes 2 * 3e38.
  AGGREGATORS.register('overflowing_mean')(lambda: stateless(
      lambda updates, weights: jax.tree.map(
          lambda u: jnp.full(u.shape[1:], 3e38, u.dtype) * 2, updates)))


def test_a_non_finite_aggregate_is_refused_and_counted():
  """The model, the server optimizer's and the rule's state stay."""
  config = tiny_digits()
  config.aggregator = 'overflowing_mean'
  config.server.optimizer = 'adam'
  experiment = train.build(config)
  state, store = experiment.init_state()
  before = jax.device_get((state.params, state.opt_state))
  new_state, _, metrics = make_rounds(experiment.round.fn, 2)(
      state, store, experiment.data, jnp.int32(2))
  assert list(metrics['aggregate_refused']) == [1, 1]
  for a, b in zip(jax.tree.leaves((new_state.params, new_state.opt_state)),
                  jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert int(new_state.round) == 2


def test_a_diverging_run_stops_with_its_reason_keeping_a_good_checkpoint(
    tmp_path):
  """The client learning rate grows 8x a round until the train loss
  explodes; three unhealthy rounds in a row stop the run."""
  out = subprocess.run(
      [sys.executable, 'scripts/train.py', '--config',
       'experiments/fedavg_digits.py', '--workdir', str(tmp_path),
       '--config.data.num_clients=8', '--config.model=logistic',
       '--config.clients_per_round=4', '--config.client.local_steps=2',
       "--config.client.schedule=exponential(rate=8.0)",
       '--config.rounds=60', '--config.eval_every=2',
       '--config.checkpoint_every=2', '--config.halt_after=3',
       '--config.progress=False'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert out.returncode != 0
  assert 'Traceback' not in out.stderr, out.stderr
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith(f'error: {tmp_path}: stopped after round ')
  assert '3 rounds in a row (config.halt_after=3)' in line
  assert 'the last good checkpoint, round' in line
  kept = max(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert f'round {kept}, is kept' in line
  step = tmp_path / 'checkpoints' / str(kept)
  item = next(p for p in os.listdir(step) if os.path.isdir(step / p))
  state = ocp.StandardCheckpointer().restore(step / item)
  for leaf in jax.tree.leaves(state):
    if np.issubdtype(np.asarray(leaf).dtype, np.floating):
      assert np.isfinite(leaf).all()
