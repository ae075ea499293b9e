"""A mesh with a model axis (config.mesh): on 8 emulated devices, clients=4 x
model=2 and clients=2 x model=4 train what one device trains, each client's
model, optimizer state and store split over the model axis as
rounds.model_spec says; the round traces once; bad sizes fail in one line."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import tiny_digits
from fedround import train
from fedround.registry import ConfigError
from fedround.rounds import CLIENTS, MODEL, model_spec
from fedround.sweep import set_field

# SCAFFOLD keeps a control variate per client (a store the size of the
# model); Krum reads the Gram matrix of the stack, a sum over model shards.
CASES = {
    'scaffold': {'client.algorithm': 'scaffold'},
    'krum_sign_flip': {'aggregator': 'krum(f=1)', 'attack.name': 'sign_flip',
                       'attack.fraction': 0.25},
}


def _config(case: str, mesh=None):
  config = tiny_digits(rounds=4)
  config.clients_per_round = 5  # not divisible by the clients axis: padded
  for field, value in CASES[case].items():
    set_field(config, field, value)
  config.shard = mesh is not None
  if mesh:
    config.mesh.clients, config.mesh.model = mesh
  return config


def test_model_spec_splits_the_largest_divisible_floating_dimension():
  assert model_spec((64, 10), np.float32, 2) == (MODEL,)
  assert model_spec((10, 64), np.float32, 4) == (None, MODEL)
  assert model_spec((3, 3, 16, 32), np.float32, 2) == (None, None, None,
                                                        MODEL)
  assert model_spec((8, 8), np.float32, 2) == (MODEL,)  # the first of equals
  assert model_spec((10,), np.float32, 4) == ()  # 4 divides no dimension
  assert model_spec((64,), np.int32, 2) == ()  # counters, keys: whole
  assert model_spec((), np.float32, 2) == ()
  assert model_spec((64, 10), np.float32, 1) == ()


@pytest.mark.parametrize('case', sorted(CASES))
def test_model_axis_meshes_train_what_one_device_trains(case, tmp_path,
                                                        traces):
  one = train.run(_config(case), str(tmp_path / 'one'))
  for clients, model in ((4, 2), (2, 4)):
    result = train.run(_config(case, (clients, model)),
                       str(tmp_path / f'{clients}x{model}'))
    assert result.summary['mesh'] == {CLIENTS: clients, MODEL: model}
    for got, want in zip(jax.tree.leaves((result.state, result.store)),
                         jax.tree.leaves((one.state, one.store))):
      np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # Each device holds the share the rule says: the server state split by
    # model_spec, the store's client axis over `clients` too.
    for leaf in jax.tree.leaves(result.state.params):
      spec = model_spec(leaf.shape, leaf.dtype, model)
      expected = tuple(size // model if axis == MODEL else size
                       for size, axis in zip(leaf.shape, spec + (None,) * (
                           leaf.ndim - len(spec))))
      assert {s.data.shape for s in leaf.addressable_shards} == {expected}
    for leaf in jax.tree.leaves(result.store):
      spec = model_spec(leaf.shape[1:], leaf.dtype, model)
      rows = leaf.shape[0] // clients
      expected = (rows,) + tuple(
          size // model if axis == MODEL else size
          for size, axis in zip(leaf.shape[1:], spec + (None,) * (
              leaf.ndim - 1 - len(spec))))
      assert {s.data.shape for s in leaf.addressable_shards} == {expected}
  # Each run's round traced once over its two calls of 2 rounds.
  assert [traces[i] for i in range(3)] == [1, 1, 1]


@pytest.mark.parametrize('mesh, message', [
    ((4, 4), 'config.mesh: clients=4 x model=4 is 16 devices, but this run '
             'has 8; choose sizes whose product is 8'),
    ((0, 3), 'config.mesh: clients=2 x model=3 is 6 devices, but this run '
             'has 8'),
    ((2, 0), 'config.mesh: clients must be >= 0'),
])
def test_a_mesh_that_is_not_the_device_count_fails_in_one_line(mesh,
                                                               message):
  with pytest.raises(ConfigError) as error:
    train.build(_config('scaffold', mesh))
  assert str(error.value).startswith(message)
  assert '\n' not in str(error.value)


def test_a_checkpoint_of_one_mesh_resumes_on_another_shape(tmp_path):
  """Saved on clients=4 x model=2, resumed on 2 x 4 (each leaf restored
  with the new shardings): the run goes on as one trained on one device."""
  config = _config('scaffold', (4, 2))
  config.rounds = 2
  train.run(config, str(tmp_path / 'moved'))
  config = _config('scaffold', (2, 4))
  resumed = train.run(config, str(tmp_path / 'moved'))
  assert resumed.summary['resumed_from'] == 2
  assert resumed.summary['mesh'] == {CLIENTS: 2, MODEL: 4}
  kernel = resumed.state.params['params']['Dense_0']['kernel']
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 10)}
  one = train.run(_config('scaffold'), str(tmp_path / 'one'))
  for got, want in zip(jax.tree.leaves((resumed.state, resumed.store)),
                       jax.tree.leaves((one.state, one.store))):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
