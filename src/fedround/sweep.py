"""Sweeps: a grid of runs of one experiment, each in its own directory.

An experiment file may declare its grid next to its config (big_vision
style)::

  def get_sweep():
    return product(sweep('aggregator', ['mean', 'weighted_mean']),
                   sweep('seed', [0, 1, 2]))

Each element is a dict of dotted config fields to values. ``plan`` applies
them, vets every run before any starts, and names each run's directory by
its overrides; ``execute`` runs what is not finished yet, in-process or in
``jobs`` processes, optionally grouping runs that differ only in REPLICA
fields into one vmapped computation, and keeps going past failures.
"""
from __future__ import annotations

import concurrent.futures
import copy
import difflib
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import re
import runpy
import traceback
from typing import Any, Iterable, NamedTuple

import ml_collections
import tqdm

from fedround import train
from fedround.registry import ConfigError


def sweep(field: str, values: Iterable[Any]) -> list[dict]:
  """One axis: ``field`` takes each of ``values``."""
  return [{field: value} for value in values]


def product(*axes: list[dict]) -> list[dict]:
  """Every combination of the axes, the last one varying fastest."""
  return [dict(itertools.chain.from_iterable(d.items() for d in combo))
          for combo in itertools.product(*axes)]


def chain(*grids: list[dict]) -> list[dict]:
  """The grids one after another, e.g. each method with its own grid."""
  return [dict(d) for grid in grids for d in grid]


def declared_grid(config_arg: str) -> list[dict]:
  """The grid of ``get_sweep()`` in the config file of ``'path[:variant]'``
  (called with the variant if it takes one); one plain run if it has none."""
  path, _, variant = config_arg.partition(':')
  get_sweep = runpy.run_path(path).get('get_sweep')
  if get_sweep is None:
    return [{}]
  takes_variant = bool(inspect.signature(get_sweep).parameters)
  return get_sweep(variant or None) if takes_variant else get_sweep()


def set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  """``config.<field> = value`` for a dotted ``field``; unknown fields and
  wrongly typed values fail naming the valid ones. Keys under ``data`` are the
  data set's keyword arguments, so new ones are allowed (``check`` vets
  them)."""
  *parents, leaf = field.split('.')
  node, path = config, 'config'
  for name in parents:
    if name not in node:
      _unknown_field(field, node, path, name)
    node, path = node[name], f'{path}.{name}'
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f'sweep field {field!r}: {path} is a value, not a '
                        'group of fields')
  if leaf not in node and path != 'config.data':
    _unknown_field(field, node, path, leaf)
  try:
    node[leaf] = value
  except TypeError:
    raise ConfigError(
        f'sweep field {field!r}: expected {type(node[leaf]).__name__}, got '
        f'{value!r}') from None


def _unknown_field(field, node, path, name):
  close = difflib.get_close_matches(name, list(node.keys()), n=1)
  hint = f' (did you mean {close[0]!r}?)' if close else ''
  raise ConfigError(f'sweep field {field!r}: {path} has no field {name!r}'
                    f'{hint}; valid fields: {", ".join(sorted(node.keys()))}')


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with each dotted field set."""
  config = copy.deepcopy(config)
  config.unlock()
  for field, value in overrides.items():
    set_field(config, field, value)
  return config


class Run(NamedTuple):
  name: str        # directory name, from the overrides
  overrides: dict  # dotted field -> value
  config: ml_collections.ConfigDict
  workdir: str


_UNSAFE = re.compile(r'[^A-Za-z0-9._=+-]+')


def run_name(overrides: dict) -> str:
  """``{'aggregator': 'clip(max_norm=10) | krum'}`` ->
  ``'aggregator=clip_max_norm=10_+krum'``: readable, shell-safe, stable."""
  if not overrides:
    return 'base'
  parts = []
  for field, value in overrides.items():
    text = str(value).replace(' ', '').replace('|', '+')
    parts.append(f'{field}={_UNSAFE.sub("_", text).strip("_")}')
  name = ','.join(parts)
  if len(name) > 120:
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode())
    name = f'{name[:100]}-{digest.hexdigest()[:8]}'
  return name


def plan(config: ml_collections.ConfigDict, grid: list[dict],
         workdir: str) -> list[Run]:
  """The sweep's runs, each vetted (fields, values, component names, and
  that its directory holds no run of another config) before any starts."""
  if not grid:
    raise ConfigError('the sweep is empty: get_sweep() and --sweep gave no '
                      'runs')
  runs, seen = [], {}
  for overrides in grid:
    name = run_name(overrides)
    if name in seen:
      raise ConfigError(f'sweep runs {seen[name]} and {overrides} share the '
                        f'directory name {name!r}; make the overrides '
                        'distinct')
    seen[name] = overrides
    run = Run(name, dict(overrides), apply_overrides(config, overrides),
              os.path.join(workdir, name))
    try:
      train.check(run.config)
      train.check_resumable(run.config, run.workdir)
    except ConfigError as e:
      raise ConfigError(f'sweep run {name}: {e}') from None
    runs.append(run)
  return runs


def is_finished(run: Run) -> bool:
  path = os.path.join(run.workdir, 'summary.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f)['rounds'] >= run.config.rounds


REPLICA_ALIASES = {'seeds': 'seed'}


def parse_replica_fields(text: str) -> tuple[str, ...]:
  """``'seeds,client.learning_rate'`` -> the replica fields, vetted."""
  fields = tuple(REPLICA_ALIASES.get(f.strip(), f.strip())
                 for f in text.split(',') if f.strip())
  for field in fields:
    if field not in train.REPLICA_FIELDS:
      raise ConfigError(
          f'--replicas {field!r}: replicas can only differ in numeric fields '
          f'the round reads as arrays; valid: seeds, '
          f'{", ".join(train.REPLICA_FIELDS)}')
  return fields


def group_replicas(runs: list[Run], fields: tuple[str, ...]
                   ) -> list[list[Run]]:
  """Runs equal but for ``fields``, in groups (first-seen order)."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    key = json.dumps({k: v for k, v in run.overrides.items()
                      if k not in fields}, sort_keys=True, default=str)
    groups.setdefault(key, []).append(run)
  return list(groups.values())


class SweepResult(NamedTuple):
  finished: list[str]    # ran to the end in this invocation
  skipped: list[str]     # already finished before it
  failed: dict[str, str]  # run name -> the error's last line


def _run_job(runs: list[Run]) -> str | None:
  """Trains one run, or a group as vmapped replicas; returns the traceback
  of a failure (written to each run's error.txt) or None."""
  for run in runs:
    error_path = os.path.join(run.workdir, 'error.txt')
    if os.path.exists(error_path):
      os.remove(error_path)
  try:
    if len(runs) == 1:
      train.run(runs[0].config, runs[0].workdir)
    else:
      train.run_replicas([r.config for r in runs], [r.workdir for r in runs])
    return None
  except Exception:  # pylint: disable=broad-except
    error = traceback.format_exc()
    for run in runs:
      os.makedirs(run.workdir, exist_ok=True)
      with open(os.path.join(run.workdir, 'error.txt'), 'w') as f:
        f.write(error)
    return error


def execute(runs: list[Run], *, jobs: int = 1,
            replicas: tuple[str, ...] = (), progress: bool = True
            ) -> SweepResult:
  """Runs every unfinished run; failures are recorded, not raised."""
  todo = [r for r in runs if not is_finished(r)]
  skipped = [r.name for r in runs if is_finished(r)]
  for run in todo:
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, 'overrides.json'), 'w') as f:
      json.dump(run.overrides, f, indent=2)
  work = group_replicas(todo, replicas) if replicas else [[r] for r in todo]
  finished, failed = [], {}
  bar = tqdm.tqdm(total=len(runs), initial=len(skipped), unit='run',
                  disable=not progress, dynamic_ncols=True, desc='sweep')

  def record(job: list[Run], error: str | None):
    for run in job:
      if error is None:
        finished.append(run.name)
      else:
        failed[run.name] = error.strip().splitlines()[-1]
    bar.update(len(job))
    bar.set_postfix(failed=len(failed))

  if jobs <= 1:
    for job in work:
      bar.set_description(f'sweep: {job[0].name}')
      record(job, _run_job(job))
  else:
    quiet = [[r._replace(config=_without_progress(r.config)) for r in job]
             for job in work]
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
      futures = {pool.submit(_run_job, job): job for job in quiet}
      for future in concurrent.futures.as_completed(futures):
        record(futures[future], future.result())
  bar.close()
  return SweepResult(finished, skipped, failed)


def _without_progress(config: ml_collections.ConfigDict):
  config = copy.deepcopy(config)
  config.progress = False
  return config


def format_result(result: SweepResult) -> str:
  total = len(result.finished) + len(result.skipped) + len(result.failed)
  lines = [f'{total} runs: {len(result.finished)} finished, '
           f'{len(result.skipped)} already done, {len(result.failed)} failed']
  lines += [f'  FAILED {name}: {error}  (see {name}/error.txt)'
            for name, error in result.failed.items()]
  return '\n'.join(lines)
