"""The Byzantine grid (experiments/byzantine.py) end to end at a tiny size:
every cell configures, one run per rule (each attack used) trains, and the
report writes the table and heatmap."""
import itertools
import json
import os

import numpy as np
import pytest

import byzantine
from fedround import sweep, train
from fedround.analysis import report
from fedround.registry import ConfigError


def _tiny(config):
  config.model = 'logistic'
  config.client.local_steps = 2
  config.rounds = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.progress = False
  return config


def test_every_cell_of_the_full_grid_configures(tmp_path):
  runs = sweep.plan(byzantine.get_config(), byzantine.get_sweep(),
                    str(tmp_path))
  rules, attacks = len(byzantine.RULES), len(byzantine.ATTACKS)
  assert len(runs) == rules + rules * attacks * 2
  assert len({run.name for run in runs}) == len(runs)
  fractions = {run.overrides['attack.fraction'] for run in runs}
  assert fractions == {0.0, 0.1, 0.2}


# make test's cells: every attack once, on rules of each kind (coordinate-
# wise, distance, iterative, stateful, subspace, a pre-aggregator chain).
# The optimal attacks search over the rule they face, so they meet the
# cheap coordinate-wise rules (the iterative ones would compile twice).
REDUCED = {'median': 'optimal_ipm', 'trimmed_mean': 'optimal_alie',
           'krum': 'alie', 'geometric_median': 'sign_flip',
           'centered_clipping': 'ipm', 'bulyan': 'gaussian',
           'mda': 'nan', 'flag': 'mimic', 'nnm_krum': 'label_flip'}


@pytest.mark.parametrize('size', [
    'reduced', pytest.param('full', marks=pytest.mark.slow)])
def test_tiny_grid_runs_and_reports(size, tmp_path):
  """Rules under one attack at 20%, plus FedAvg without attack; non-finite
  attacks leave every model finite. ``full``: every rule, the attacks
  cycled so each is used, sharded over the 8 devices as the experiment
  runs. ``reduced`` (make test): the REDUCED cells, every attack once, on
  one device (a sharded round compiles about a fifth slower); the rules it
  leaves out are each checked on the stack, jitted and sharded, in
  test_robust / test_preaggregators, and a robust rule under attack runs
  sharded against one device in test_families (whose one-device run is
  this grid's krum cell, compiled once)."""
  config = _tiny(byzantine.get_config())
  if size == 'full':
    attacks = itertools.cycle(byzantine.ATTACKS)
    cells = [(rule, next(attacks)) for rule in byzantine.RULES.values()]
  else:
    assert set(REDUCED.values()) == set(byzantine.ATTACKS)
    cells = [(byzantine.RULES[rule], attack)
             for rule, attack in REDUCED.items()]
    config.shard = False
  grid = [{'aggregator': 'weighted_mean', 'attack.name': 'none',
           'attack.fraction': 0.0}]
  grid += [{'aggregator': rule, 'attack.name': attack,
            'attack.fraction': 0.2} for rule, attack in cells]
  runs = sweep.plan(config, grid, str(tmp_path))
  result = sweep.execute(runs, progress=False)
  assert not result.failed, result.failed
  assert len(result.finished) == len(grid)
  for run in runs:
    with open(os.path.join(run.workdir, 'summary.json')) as f:
      summary = json.load(f)
    assert np.isfinite(summary['final_test_loss']), run.name
    with open(os.path.join(run.workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
    byzantine_counts = [row['byzantine'] for row in rows if 'byzantine' in row]
    if run.overrides['attack.fraction']:
      assert sum(byzantine_counts) > 0, run.name  # 10 of 50 clients attack

  out = tmp_path / 'report'
  text = report.report(str(tmp_path), str(out),
                       tasks=['attack.fraction', 'attack.name'],
                       heatmap=['aggregator', 'attack.fraction',
                                'attack.name'])
  heatmap = (out / 'heatmap.md').read_text()
  for rule, _ in cells:
    assert rule.replace('|', r'\|') in heatmap
  assert (out / 'heatmap.png').stat().st_size > 1000
  assert '## Heatmap' in text and '## Ranking' in text


def test_a_rule_that_cannot_tolerate_f_fails_before_training():
  config = byzantine.get_config('rule=krum')
  config.clients_per_round = 10  # krum(f=4) needs more than 2f + 2 = 10
  with pytest.raises(ConfigError, match=r'config.aggregator: .*krum'):
    train.check(config)
  config = byzantine.get_config('rule=nnm_krum')
  config.aggregator = 'bucketing(size=2) | krum(f=4)'  # 20 -> 10 buckets
  with pytest.raises(ConfigError, match='turn a cohort of 20 into 10'):
    train.check(config)


def test_unknown_rule_variant_is_named():
  with pytest.raises(ValueError, match="rule='krun': valid rules: fedavg"):
    byzantine.get_config('rule=krun')
