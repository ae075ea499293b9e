"""The round meets its parts only through their contracts: rounds.py
imports no registered rule, attack, message, client algorithm or other
part, and a round whose every stage is built from registry names runs
under the same code as train.build's."""
import ast
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from fedround import rounds
from fedround.aggregators import AGGREGATORS, build_aggregator
from fedround.attacks import ATTACKS
from fedround.client import make_client
from fedround.client_algorithms import CLIENT_ALGORITHMS, init_store
from fedround.data import DATASETS, PARTICIPATION
from fedround.losses import LOSSES
from fedround.messages import MESSAGES
from fedround.models import MODELS
from fedround.optimizers import (LOCAL_SCHEDULES, OPTIMIZERS, SCHEDULES,
                                 build_optimizer)
from fedround.server import init_server_state, optimizer_step

REGISTRIES = (AGGREGATORS, ATTACKS, CLIENT_ALGORITHMS, DATASETS,
              PARTICIPATION, LOSSES, MESSAGES, MODELS, OPTIMIZERS, SCHEDULES,
              LOCAL_SCHEDULES)


def test_the_round_imports_no_registered_part():
  registered = {id(registry.get(name, 'test')): f'{registry.kind} {name!r}'
                for registry in REGISTRIES for name in registry.names()}
  tree = ast.parse(inspect.getsource(rounds))
  imported = [(node.module, alias.name) for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom)
              and (node.module or '').startswith('fedround')
              for alias in node.names]
  assert imported  # the check would pass vacuously otherwise
  for module, name in imported:
    value = getattr(importlib.import_module(module), name)
    assert id(value) not in registered, (
        f'rounds.py imports {module}.{name}, the {registered[id(value)]}')
    assert not any(value is registry for registry in REGISTRIES), (
        f'rounds.py reads the registry {module}.{name}')


def test_a_round_of_parts_built_by_name(tiny_federation):
  """SCAFFOLD clients sending signs, Byzantine clients flipping them,
  a trimmed mean: every part from its registry, one jitted round that
  keeps the store and counts the attackers."""
  data = tiny_federation
  model = MODELS.build('logistic', 'model', num_classes=data.num_classes)
  algorithm = CLIENT_ALGORITHMS.build('scaffold', 'algorithm')
  optimizer = build_optimizer('sgd', 'optimizer')
  client = make_client(model.apply, optimizer, batch_size=4,
                       max_examples=data.max_examples, local_steps=2,
                       objective=LOSSES.build('cross_entropy', 'loss'),
                       algorithm=algorithm)
  aggregator = build_aggregator('trimmed_mean(f=1)', num_clients=4)
  participation = PARTICIPATION.build('uniform', 'participation',
                                      num_clients=4, cohort_size=4)
  server_update = optimizer_step(build_optimizer('sgd', 'server'))
  round_ = rounds.make_round(
      client=client, aggregator=aggregator, server_update=server_update,
      participation=participation,
      message=MESSAGES.build('signs', 'message'),
      attack=ATTACKS.build('sign_flip', 'attack'), byzantine_ids=(1,))
  params = model.init(jax.random.PRNGKey(0), data.train.x[:1])
  state = init_server_state(
      params, server_update=server_update, aggregator=aggregator,
      key=jax.random.PRNGKey(1), client_learning_rate=0.1,
      server_learning_rate=0.01, shared=algorithm.init_shared(params))
  store = init_store(algorithm, params, 4, optimizer)
  state, store, metrics = jax.jit(round_.fn)(state, store, data)
  assert int(metrics['byzantine']) == 1 and int(metrics['participants']) == 4
  assert float(metrics['uplink_bits']) == sum(
      x.size for x in jax.tree.leaves(params))  # one bit a coordinate
  # SCAFFOLD wrote every client's control variate; the model moved.
  assert all(np.abs(np.asarray(x)).sum(axis=tuple(range(1, x.ndim))).min()
             > 0 for x in jax.tree.leaves(store))
  moved = jax.tree.map(jnp.subtract, state.params, params)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(moved)) > 0
