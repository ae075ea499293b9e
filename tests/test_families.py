"""One config of each family the other files do not already run this way,
through train.run: sharded over 8 devices it equals one device, its round
traces once, and a run stopped after round 2 and resumed ends bit for bit
where a run straight through does. (Weighted rules: test_weighted_round;
momentum with client state: test_client_algorithms.)"""
import jax
import numpy as np
import pytest

import byzantine
from conftest import assert_trees_close
from fedround import train
from test_frl import frl_config
from test_messages import _signs_config


def _robust_under_attack():
  """Krum against ALIE, the Byzantine grid's cell at the size its test
  runs (so the one-device round is the one that test compiles)."""
  config = byzantine.get_config('rule=krum,attack=alie,fraction=0.2')
  config.model = 'logistic'
  config.client.local_steps = 2
  return config


def _voting():
  """signSGD's majority vote under sign flipping."""
  config = _signs_config()
  config.attack.name = 'sign_flip'
  config.attack.fraction = 0.25
  return config


FAMILIES = {'robust under attack': _robust_under_attack, 'voting': _voting,
            'FRL': frl_config}


@pytest.mark.parametrize('family', FAMILIES)
def test_sharded_equals_one_device_and_a_resumed_run_is_bit_exact(
    family, traces, tmp_path):
  def run(name, rounds, shard):
    config = FAMILIES[family]()
    config.rounds, config.shard, config.progress = rounds, shard, False
    config.eval_every = config.checkpoint_every = 2
    result = train.run(config, str(tmp_path / name))
    return jax.device_get((result.state, result.store)), result.summary

  straight, summary = run('straight', 4, True)
  assert summary['devices'] == 8
  run('stopped', 2, True)
  resumed, summary = run('stopped', 4, True)
  assert summary['resumed_from'] == 2
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  one_device, summary = run('one_device', 4, False)
  assert summary['devices'] == 1
  assert_trees_close(straight[0].params, one_device[0].params, atol=5e-5,
                     rtol=5e-4)
  assert [traces[i] for i in range(len(traces))] == [1] * 4
