"""Builds the federation round from its stages, shards it, scans it.

round(state, store, data) -> (state, store, metrics) calls, in order: sample
the cohort (participation), let the Byzantine clients poison their data,
train the cohort (vmapped over the client axis, sharded over the mesh axis
``clients``), encode each client's message, let the Byzantine clients forge
theirs, screen out absent and non-finite ones, aggregate, the server update
(refused when the step or the new model is not finite), and update the
per-client store. Each stage is a part built elsewhere from its registry
and met here only through its contract (docs/design.md); this module
imports no concrete rule, attack, message or client algorithm.
``make_rounds`` jits a ``lax.scan`` of R rounds per call.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedround.aggregators.base import Aggregator, RoundContext
from fedround.aggregators.stack import zero_absent
from fedround.attacks.base import Attack, byzantine_mask
from fedround.client import Broadcast, Client, ClientInput
from fedround.data import FederatedData, Participation
from fedround.messages import Message, float32_bits
from fedround.registry import ConfigError
from fedround.server import ServerState, ServerUpdate

CLIENTS = 'clients'
MODEL = 'model'  # each client's model split over it (model_spec)
BYZANTINE_STREAM = 0x42595a  # folded into the run's key: who is Byzantine
MAX_REDRAWS = 100  # a cohort still too Byzantine after these is kept
PARTICIPATION_STREAM = 0x504152  # the participation model's initial state


def mesh_shape(clients: int, model: int, devices: int) -> tuple[int, int]:
  """(clients, model) of ``config.mesh`` over ``devices`` devices
  (``clients`` 0: as many as the model axis leaves); ConfigError (one line)
  when they do not make the device count."""
  if model < 1 or clients < 0:
    raise ConfigError(f'config.mesh: clients must be >= 0 (0: every device '
                      f'the model axis leaves) and model >= 1; got '
                      f'clients={clients}, model={model}')
  clients = clients or devices // model
  if clients * model != devices:
    raise ConfigError(
        f'config.mesh: clients={clients} x model={model} is '
        f'{clients * model} devices, but this run has {devices}; choose '
        f'sizes whose product is {devices}')
  return clients, model


def make_mesh(clients: int = 0, model: int = 1) -> Mesh | None:
  """The mesh of ``mesh_shape`` over every device, 1-D over ``clients`` when
  ``model`` is 1; None on a single device."""
  devices = jax.devices()
  clients, model = mesh_shape(clients, model, len(devices))
  if len(devices) < 2:
    return None
  if model == 1:
    return jax.make_mesh((clients,), (CLIENTS,),
                         axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)
  return jax.make_mesh((clients, model), (CLIENTS, MODEL),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def client_devices(mesh: Mesh | None) -> int:
  """The size of the mesh's ``clients`` axis (1 without a mesh)."""
  return 1 if mesh is None else mesh.shape[CLIENTS]


def model_spec(shape, dtype, model: int) -> tuple:
  """The FSDP rule, for one client's array over a ``model`` axis of that
  size: a floating array is split along its largest dimension that
  ``model`` divides (the first of equal ones); any other array, or one
  with no such dimension, is whole on every device. Returns the
  PartitionSpec entries."""
  if model == 1 or not jnp.issubdtype(dtype, jnp.floating):
    return ()
  dims = [d for d, size in enumerate(shape) if size % model == 0]
  if not dims:
    return ()
  split = max(dims, key=lambda d: (shape[d], -d))
  return (None,) * split + (MODEL,)


def shardings(tree, mesh: Mesh, lead: tuple = ()):
  """Each leaf's NamedSharding: its leading axes as ``lead`` says (e.g.
  (CLIENTS,) for the store, None for a replica axis), the rest by
  ``model_spec``."""
  model = mesh.shape.get(MODEL, 1)
  return jax.tree.map(lambda a: NamedSharding(mesh, P(*lead, *model_spec(
      a.shape[len(lead):], a.dtype, model))), tree)


def replicate(tree, mesh: Mesh | None):
  """Places a pytree on every device of the mesh (or the default device)."""
  if mesh is None:
    return jax.device_put(tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def store_sharding(store, mesh: Mesh | None, population: int,
                   replicas: bool = False):
  """Where each leaf of the per-client store lives: its client axis split
  over the mesh's ``clients`` axis (each device holds N / devices rows) when
  they divide N, else whole on every client device; each client's row by
  ``model_spec``. ``replicas`` puts a replica axis first."""
  if mesh is None:
    return None
  split = CLIENTS if population % client_devices(mesh) == 0 else None
  return shardings(store, mesh, (None, split) if replicas else (split,))


def place(state: ServerState, store, mesh: Mesh | None, population: int,
          replicas: bool = False):
  """(state, store) on the mesh: the server state on every client device,
  split over the model axis by ``model_spec``, the per-client store by
  ``store_sharding``."""
  if mesh is None:
    return jax.device_put((state, store))
  return (jax.device_put(state, shardings(state, mesh,
                                          (None,) if replicas else ())),
          jax.device_put(store, store_sharding(store, mesh, population,
                                               replicas)))


class Round(NamedTuple):
  fn: Callable  # (state, store, data, active=True) -> (state, store, metrics)
  cohort: Callable  # state -> (ids, present, client_keys, aggregate_key)
  cohort_buffer: int  # cohort size padded to a multiple of the device count
  # (state, R) -> ids int32[R, B]: the cohort buffers of rounds
  # state.round .. + R - 1 (participation never depends on training)
  cohorts: Callable


def _tree_all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
            for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all(axis=0)


def all_finite(tree) -> jax.Array:
  """bool scalar: every floating-point value of ``tree`` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in
                            jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


def _rule_diagnostics(agg_state) -> dict:
  """The float scalars in the aggregator's state (a learned gamma, a mean
  weight), as metrics named ``aggregator.<path>``."""
  metrics = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(agg_state)[0]:
    if jnp.ndim(leaf) == 0 and jnp.issubdtype(jnp.result_type(leaf),
                                              jnp.floating):
      name = '.'.join(str(getattr(k, 'name', getattr(k, 'key', getattr(
          k, 'idx', k)))) for k in path)
      metrics[f'aggregator.{name}'] = leaf
  return metrics


def _idle_fraction(steps, lane_steps):
  """Fraction of the lane-steps the vmapped local loops computed that
  trained no client."""
  return 1 - jnp.sum(steps) / jnp.maximum(jnp.sum(lane_steps), 1)


def _update_store(store, ids, usable, rows, population):
  """Scatters the usable clients' new rows into the store; the others
  keep theirs."""
  target = jnp.where(usable, ids, population)  # out of range: dropped
  return jax.tree.map(lambda s, x: s.at[target].set(x, mode='drop'), store,
                      rows)


def _update_shared(algorithm, shared, usable, own_before, results,
                   aggregate, learning_rate, population):
  """The client algorithm's server-side state after the round; a round
  with no usable client changes nothing."""
  steps = jnp.sum(jnp.where(usable, results.scaled_steps, 0)) / jnp.maximum(
      jnp.sum(usable), 1)
  new = algorithm.update_shared(
      shared, own_before, results.own, usable, aggregate,
      learning_rate * jnp.maximum(steps, 1), population)
  return jax.tree.map(lambda new, old: jnp.where(jnp.any(usable), new, old),
                      new, shared)


class Cohort(NamedTuple):
  """The round's cohort buffer: participants first, padded with absent
  slots to a multiple of the device count."""
  ids: jax.Array            # int32[B], a valid id in every slot
  present: jax.Array        # bool[B]
  keys: jax.Array           # [B] keys: a client's depends on round and id
  rule_key: jax.Array       # the aggregator's key (the attack folds in 1)
  participation: Any        # the participation model's next state
  redraws: jax.Array        # int32: cohorts drawn again (redraw_byzantine)


def sample_cohort(participation: Participation, buffer: int) -> Callable:
  """Stage ``(state, is_byzantine) -> Cohort``: the participation model's
  draw for round ``state.round``, padded to ``buffer`` slots."""

  def sample(state: ServerState, is_byzantine, attempt=None) -> Cohort:
    """``attempt`` (a redraw's number) is folded into the draw's key."""
    del is_byzantine
    key = jax.random.fold_in(state.key, state.round)
    k_sample, k_clients, k_aggregate = jax.random.split(key, 3)
    if attempt is not None:
      k_sample = jax.random.fold_in(k_sample, attempt)
    ids, present, participation_state = participation.sample(
        k_sample, state.participation, state.round)
    pad = buffer - participation.cohort_size
    ids = jnp.concatenate([ids, jnp.zeros(pad, jnp.int32)])
    present = jnp.concatenate([present, jnp.zeros(pad, bool)])
    keys = jax.vmap(lambda i: jax.random.fold_in(k_clients, i))(ids)
    return Cohort(ids, present, keys, k_aggregate, participation_state,
                  jnp.int32(0))

  return sample


def redraw_byzantine(sample: Callable, share: float) -> Callable:
  """Stage ``sample`` drawn again (with its key folded with the attempt)
  while the cohort's Byzantine clients number at least ``share`` x its
  present clients, up to MAX_REDRAWS times (FRL's code redraws at 1/2,
  under uniform participation; a deterministic participation model draws
  the same cohort again)."""

  def redrawn(state: ServerState, is_byzantine) -> Cohort:
    def too_many(cohort):
      count = jnp.sum(cohort.present & is_byzantine[cohort.ids])
      return (count > 0) & (count >= share * jnp.sum(cohort.present)) & (
          cohort.redraws < MAX_REDRAWS)

    def again(cohort):
      attempt = cohort.redraws + 1
      return sample(state, is_byzantine, attempt)._replace(redraws=attempt)

    return jax.lax.while_loop(too_many, again, sample(state, is_byzantine))

  return redrawn


def make_round(*, client: Client, aggregator: Aggregator,
               server_update: ServerUpdate, participation: Participation,
               message: Message, mesh: Mesh | None = None,
               attack: Attack | None = None,
               byzantine_fraction: float = 0.0,
               byzantine_ids: tuple[int, ...] = (),
               client_schedule=None, server_schedule=None,
               redraw_share: float = 0.0) -> Round:
  """Both learning rates come from ``state.hparams``, each times its
  schedule (round -> multiplier, optimizers.build_schedule; default none)
  of the rounds completed. The Byzantine clients
  (``byzantine_ids``, or a ``byzantine_fraction`` of the federation drawn
  from the run's key) poison their data and forge their messages with
  ``attack``; with ``redraw_share`` > 0 the cohort is drawn by
  ``redraw_byzantine``; without an attack the round has neither stage.
  Clients send ``message``; ``server_update`` turns the aggregate into the
  model."""
  unscheduled = lambda round_: 1.0
  client_schedule = client_schedule or unscheduled
  server_schedule = server_schedule or unscheduled
  attacked = attack is not None and (bool(byzantine_ids)
                                     or byzantine_fraction > 0)
  num_devices = client_devices(mesh)
  buffer = math.ceil(participation.cohort_size / num_devices) * num_devices
  sample = sample_cohort(participation, buffer)
  if redraw_share:
    sample = redraw_byzantine(sample, redraw_share)
  # Every client reads the (replicated) federation arrays and gathers its
  # own rows, so each device gathers only the rows of its own clients.
  if mesh is None:
    train_cohort = client.train
  else:
    def per_device(broadcast: Broadcast, inputs: ClientInput):
      # Replicated params would make grads implicitly psum'ed across devices.
      params, shared = jax.lax.pcast((broadcast.params, broadcast.shared),
                                     CLIENTS, to='varying')
      return client.train(broadcast._replace(params=params, shared=shared),
                          inputs)
    # Manual over the clients axis only: the model axis, if any, is left
    # to jit's partitioner, which keeps each client's model split by
    # model_spec.
    train_cohort = jax.shard_map(per_device, mesh=mesh,
                                 in_specs=(P(), P(CLIENTS)),
                                 out_specs=P(CLIENTS), axis_names={CLIENTS})
  algorithm = client.algorithm

  def byzantine_clients(state: ServerState, population: int):
    return byzantine_mask(
        jax.random.fold_in(state.key, BYZANTINE_STREAM), population,
        byzantine_fraction, byzantine_ids)

  def aggregate_stage(messages, usable, results, cohort, state, context):
    """The rule on the usable clients' messages as the server decodes
    them, weighted by example counts."""
    weights = jnp.where(usable, results.num_examples, 0).astype(jnp.float32)
    return aggregator.update(
        zero_absent(message.decode(messages), usable), state.agg_state,
        state.params, weights=weights, key=cohort.rule_key, context=context)

  def train_stage(state, store, cohort, training_data, learning_rate):
    """The cohort's local training from the global model, each client with
    its row of the store; also returns those rows as they were."""
    own_before = jax.tree.map(lambda x: x[cohort.ids], store)
    results, lane_steps = train_cohort(
        Broadcast(state.params, learning_rate, state.shared, training_data),
        ClientInput(cohort.ids, cohort.keys, own_before, cohort.present))
    return results, own_before, dict(
        client_learning_rate=learning_rate,
        local_steps=jnp.sum(results.steps),
        lane_steps=jnp.sum(lane_steps),
        idle_step_fraction=_idle_fraction(results.steps, lane_steps))

  def uplink_stage(results, state):
    """Each client's message, and whether all it sent is finite."""
    messages = message.encode(results.delta, state.params)
    finite = _tree_all_finite((results.delta, results.extras, results.own))
    bits = message.bits(state.params)
    # What one client sends, and that over its delta as float32.
    return messages, finite, dict(
        uplink_bits=jnp.float32(bits),
        uplink_ratio_vs_float32=jnp.float32(bits / float32_bits(
            state.params)))

  def forge_stage(messages, finite, byzantine, results, cohort, state,
                  context):
    """The Byzantine clients' messages replaced by the attack's; the
    forged ones are screened again."""
    metrics = dict(byzantine=jnp.sum(byzantine))
    if not attacked:
      return messages, finite, metrics
    honest = cohort.present & ~byzantine & finite

    def probe(stack):  # the server's view, for attacks that search
      usable = (honest | byzantine) & _tree_all_finite(stack)
      return aggregate_stage(stack, usable, results, cohort, state,
                             context)[0]

    messages = message.project(attack.forge(
        zero_absent(messages, honest | byzantine), byzantine=byzantine,
        honest=honest, key=jax.random.fold_in(cohort.rule_key, 1),
        aggregate=probe))
    return (messages, jnp.where(byzantine, _tree_all_finite(messages),
                                finite), metrics)

  def screen_stage(cohort, finite, byzantine, results):
    """The clients the rule may use: present, with finite messages."""
    usable = cohort.present & finite
    trained = usable & ~byzantine  # the honest clients' own training loss
    return usable, dict(
        participants=jnp.sum(cohort.present),
        nonfinite_excluded=jnp.sum(cohort.present & ~finite),
        # NaN in a round where nobody trained (a cyclic lull), not 0.
        train_loss=jnp.where(jnp.any(trained), jnp.sum(
            jnp.where(trained, results.loss, 0)) / jnp.maximum(
                jnp.sum(trained), 1), jnp.nan))

  def server_stage(state, aggregate, agg_state, learning_rate):
    """The server update; a non-finite step or model is refused: the
    server keeps its model, optimizer and rule state (and the clients
    their store)."""
    params, opt_state, step = server_update.update(
        aggregate, state.opt_state, state.params, learning_rate)
    accepted = all_finite((step, params))
    params, opt_state, agg_state = jax.tree.map(
        lambda new, old: jnp.where(accepted, new, old),
        (params, opt_state, agg_state),
        (state.params, state.opt_state, state.agg_state))
    return params, opt_state, agg_state, step, accepted, dict(
        server_learning_rate=learning_rate,
        update_norm=optax.tree.norm(step),
        aggregate_refused=(~accepted).astype(jnp.int32),
        **_rule_diagnostics(agg_state))

  def store_stage(store, shared, cohort, stored, own_before, results, step,
                  learning_rate, population):
    """The stored clients' new rows scattered back, kept split over the
    mesh as ``place`` put it, and the algorithm's server-side state."""
    store = _update_store(store, cohort.ids, stored, results.own, population)
    sharding = store_sharding(store, mesh, population)
    if sharding is not None:
      store = jax.lax.with_sharding_constraint(store, sharding)
    shared = _update_shared(algorithm, shared, stored, own_before, results,
                            step, learning_rate, population)
    return store, shared

  def round_fn(state: ServerState, store, data: FederatedData, active=True):
    """One round; with ``active`` False (a traced bool) the per-client
    store is left as it was, so ``make_rounds`` can skip a round without
    copying the store."""
    is_byzantine = byzantine_clients(state, data.num_clients)
    cohort = sample(state, is_byzantine)
    training_data = data.train
    if attacked:
      training_data = attack.poison(training_data, is_byzantine,
                                    data.num_classes)
    client_learning_rate = (state.hparams['client_learning_rate']
                            * client_schedule(state.round))
    server_learning_rate = (state.hparams['server_learning_rate']
                            * server_schedule(state.round))
    results, own_before, trained = train_stage(
        state, store, cohort, training_data, client_learning_rate)
    messages, finite, uplink = uplink_stage(results, state)
    # What every rule may read besides the stack (see aggregators.base).
    context = RoundContext(
        client_ids=jnp.where(cohort.present, cohort.ids, -1),
        round=state.round,
        **zero_absent(results.extras, cohort.present & finite))
    byzantine = cohort.present & is_byzantine[cohort.ids]
    messages, finite, forged = forge_stage(messages, finite, byzantine,
                                           results, cohort, state, context)
    usable, screened = screen_stage(cohort, finite, byzantine, results)
    aggregate, agg_state = aggregate_stage(messages, usable, results, cohort,
                                           state, context)
    params, opt_state, agg_state, step, accepted, served = server_stage(
        state, aggregate, agg_state, server_learning_rate)
    store, shared = store_stage(
        store, state.shared, cohort, usable & active & accepted, own_before,
        results, step, client_learning_rate, data.num_clients)
    metrics = {**screened, **trained, **uplink, **forged, **served,
               **(dict(cohort_redraws=cohort.redraws) if redraw_share
                  else {})}
    new_state = state.replace(round=state.round + 1, params=params,
                              opt_state=opt_state, agg_state=agg_state,
                              shared=shared,
                              participation=cohort.participation)
    if mesh is not None and MODEL in mesh.axis_names:
      # Kept split over the model axis as ``place`` put it, round after
      # round (the next call's input shardings are this call's outputs).
      new_state = jax.lax.with_sharding_constraint(new_state,
                                                   shardings(new_state, mesh))
    return new_state, store, metrics

  population = len(participation.probabilities)

  def cohort_of(state: ServerState):
    cohort = sample(state, byzantine_clients(state, population))
    return cohort.ids, cohort.present, cohort.keys, cohort.rule_key

  def cohorts_of(state: ServerState, rounds: int):
    def next_round(state, _):
      cohort = sample(state, byzantine_clients(state, population))
      return state.replace(round=state.round + 1,
                           participation=cohort.participation), cohort.ids
    return jax.lax.scan(next_round, state, None, length=rounds)[1]

  return Round(round_fn, cohort_of, buffer, cohorts_of)


def make_rounds(round_fn, rounds_per_call: int, replicas: bool = False):
  """jit(scan of ``rounds_per_call`` rounds). Called as
  ``fn(state, store, data, num_active) -> (state, store, metrics)``; rounds
  past ``num_active`` leave both untouched, so a short last chunk reuses the
  same compiled function. The state and the store are donated.

  With the federation on the host (``host.pack``), ``fn(state, store, data,
  num_active, trains)`` takes each round's packed training examples,
  ``trains`` (a ClientData with a leading axis of the R rounds), in place
  of ``data.train``.

  With ``replicas`` the state and store have a leading replica axis (runs
  that differ in seed or in ``state.hparams``) and the round is vmapped over
  it, sharing the data; metrics come back as [rounds, replicas].
  """
  if replicas:
    round_fn = jax.vmap(round_fn, in_axes=(0, 0, None, None))

  def run(state, store, data, num_active, trains=None):
    def body(carry, inputs):
      state, store = carry
      t, train = inputs
      active = t < num_active
      round_data = data if train is None else data.replace(train=train)
      # The round itself leaves the per-client store alone when inactive;
      # selecting it here too would copy all N rows every round.
      new_state, store, metrics = round_fn(state, store, round_data, active)
      state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state,
                           state)
      return (state, store), metrics
    (state, store), metrics = jax.lax.scan(
        body, (state, store), (jnp.arange(rounds_per_call), trains))
    return state, store, metrics

  return jax.jit(run, donate_argnums=(0, 1))


def _scores(apply_fn, score, params, x, y, batch_size, mesh=None):
  """``score(logits, labels)`` (tasks.Score) of every row of ``x``,
  computed in batches of ``batch_size``, each split over the mesh's
  devices when they divide it (else every device would compute it all)."""
  if mesh is None or batch_size % client_devices(mesh):
    split = lambda a: a
  else:
    split = lambda a: jax.lax.with_sharding_constraint(
        a, NamedSharding(mesh, P(CLIENTS)))
  total = x.shape[0]
  pad = -total % batch_size
  extend = lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:],
                                                   a.dtype)])
  shape = lambda a: a.reshape((-1, batch_size) + a.shape[1:])

  def body(_, batch):
    bx, by = map(split, batch)
    return None, score(apply_fn(params, bx), by)

  _, scores = jax.lax.scan(body, None, (shape(extend(x)), shape(extend(y))))
  return jax.tree.map(lambda a: a.reshape(-1)[:total], scores)


def _ratios(sums):
  """(loss, accuracy) from summed scores."""
  return (sums.loss / jnp.maximum(sums.loss_count, 1),
          sums.correct / jnp.maximum(sums.accuracy_count, 1))


def make_evaluate(apply_fn, task, batch_size: int = 1024, mesh=None):
  """jit(params, x, y) -> (loss, accuracy) over a test split, in batches
  (split over ``mesh``): the task's (tasks.Task) loss and accuracy over all
  scored targets."""

  def evaluate(params, x, y):
    return _ratios(jax.tree.map(jnp.sum, _scores(
        apply_fn, task.score, params, x, y, batch_size, mesh)))

  return jax.jit(evaluate)


def make_evaluate_clients(apply_fn, task, batch_size: int = 1024,
                          mesh=None):
  """jit(params, train: ClientData) -> (loss, accuracy) of the global model
  on the clients' own training examples: each client's mean over its
  examples' scored targets, averaged uniformly over the N clients. That is
  the training objective f(w) = (1/N) sum_i F_i(w) which FedAU (Wang & Ji,
  ICLR 2024) targets and which averaging only the participants can drift
  from."""

  def evaluate(params, train):
    scores = _scores(apply_fn, task.score, params, train.x, train.y,
                     batch_size, mesh)
    owner = train.owner()
    per_client = jax.tree.map(lambda v: jax.ops.segment_sum(
        jnp.where(owner >= 0, v, 0), jnp.maximum(owner, 0),
        train.num_clients), scores)
    return jax.tree.map(jnp.mean, _ratios(per_client))

  return jax.jit(evaluate)
