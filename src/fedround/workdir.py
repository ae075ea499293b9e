"""A run's directory: one run at a time, checkpoints that cannot poison it.

- ``hold(workdir)`` checks the path and holds an ``fcntl`` lock on
  ``workdir/lock`` for the run's life; a second run on the same workdir
  refuses at once, naming the holder's pid. The kernel drops the lock when
  its process dies, so a killed run's lock is simply taken over.
- ``Checkpoints`` wraps Orbax's CheckpointManager. A step that fails to
  load, or loads with another structure, shape or dtype, or with a
  non-finite value, is moved to ``workdir/set_aside/`` (never deleted) with
  a one-line warning, and the next older step is tried; so are Orbax's
  leftover ``*.orbax-checkpoint-tmp*`` folders of an interrupted save. A
  non-finite state is never saved, so the newest kept step is always good.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fedround.distributed import is_primary, sync
from fedround.rounds import all_finite

SET_ASIDE = 'set_aside'
_ORBAX_TMP = '.orbax-checkpoint-tmp'


class RunError(Exception):
  """A run that cannot start or go on; its message is one line."""


def prepare(workdir: str) -> None:
  """Creates ``workdir``; RunError (one line) when it cannot be a run's
  directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunError(f'workdir {workdir} is a file, not a directory; name a '
                   'directory (it is created if missing)')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise RunError(f'workdir {workdir} cannot be created: '
                   f'{e.strerror}') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise RunError(f'workdir {workdir} is not writable; choose a directory '
                   'you can write to')


@contextlib.contextmanager
def hold(workdir: str):
  """Holds ``workdir`` for one run (see the module docstring). A run that
  wrote nothing (a config error) leaves no lock file, nor the workdir if
  it made it. In a multi-process run the primary process holds it for
  all."""
  created = not os.path.exists(workdir)
  prepare(workdir)
  if not is_primary():
    yield
    return
  path = os.path.join(workdir, 'lock')
  try:
    handle = open(path, 'a+')  # pylint: disable=consider-using-with
  except OSError as e:
    raise RunError(f'workdir {workdir} is not writable ({e.strerror}); '
                   'choose a directory you can write to') from None
  held = False
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
      held = True
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'unknown'
      raise RunError(f'workdir {workdir} is in use by another run (pid '
                     f'{holder}); wait for it to finish or use another '
                     'workdir') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'{os.getpid()}\n')
    handle.flush()
    yield
  finally:
    if held and os.listdir(workdir) == ['lock']:
      os.remove(path)  # before unlocking: no other run holds this file
      if created:
        os.rmdir(workdir)
    handle.close()  # releases the lock


def _leaves_problem(restored, expected) -> str | None:
  """Why ``restored`` cannot stand for ``expected`` (a state of the right
  structure), or None."""
  if jax.tree.structure(restored) != jax.tree.structure(expected):
    return ('its structure differs from this run\'s state (saved by '
            'another version of fedround or another config)')
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(
      restored)[0], jax.tree.leaves(expected)):
    name = jax.tree_util.keystr(path)
    if np.shape(got) != np.shape(want) or got.dtype != want.dtype:
      return (f'{name} is {got.dtype}{list(np.shape(got))}, expected '
              f'{want.dtype}{list(np.shape(want))}')
    if jnp.issubdtype(got.dtype, jnp.inexact) and not bool(
        jnp.all(jnp.isfinite(got))):
      return f'{name} holds non-finite values'
  return None


class Checkpoints:
  """The checkpoints of one workdir, keeping the newest ``keep`` steps."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if os.path.isdir(self.directory):
      for name in sorted(os.listdir(self.directory)):
        if _ORBAX_TMP in name:
          self._set_aside(name, 'an interrupted save left it unfinished')
    sync('checkpoints checked')
    self.keep = keep
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep,
                                             create=True))

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def _set_aside(self, name: str, reason: str) -> None:
    """Moves ``name`` to set_aside/ (the primary process: the workdir is
    one every process sees, as Orbax needs)."""
    if not is_primary():
      return
    target_dir = os.path.join(self.workdir, SET_ASIDE)
    os.makedirs(target_dir, exist_ok=True)
    target, n = os.path.join(target_dir, name), 1
    while os.path.exists(target):
      target, n = os.path.join(target_dir, f'{name}.{n}'), n + 1
    shutil.move(os.path.join(self.directory, name), target)
    logging.warning('checkpoint %s set aside to %s: %s',
                    os.path.join(self.directory, name), target, reason)

  def set_aside(self, step: int, reason: str) -> None:
    self._set_aside(str(step), reason)
    sync(f'step {step} set aside')
    # A new manager: one that failed on a step may keep wrong guesses of
    # its layout (e.g. the item names, from a step missing its item).
    self.manager.close()
    self.manager = self._open()

  def restore(self, step: int, like):
    """The state saved at ``step`` if it is whole and finite; else sets
    the step aside and returns None."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self.manager.restore(
          step, args=ocp.args.StandardRestore(abstract))
      problem = _leaves_problem(restored, like)
    except Exception as e:  # pylint: disable=broad-except
      restored, problem = None, (f'it does not load ({type(e).__name__}: '
                                 f'{str(e).strip().splitlines()[0][:200]})'
                                 if str(e).strip() else
                                 f'it does not load ({type(e).__name__})')
    if problem is None:
      return restored
    self.set_aside(step, problem)
    return None

  def save(self, step: int, state) -> bool:
    """Saves ``state`` unless it holds non-finite values (then the newest
    good checkpoint stays, and this says so)."""
    if not bool(all_finite(state)):
      logging.warning('round %d: state is not finite; not saved over the '
                      'last good checkpoint in %s', step, self.directory)
      return False
    self.manager.save(step, args=ocp.args.StandardSave(state))
    return True

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_newest_good(checkpoints: list[Checkpoints], states: list):
  """(step, states) of the newest step every run holds in good condition,
  setting damaged steps aside, and the steps past it that only some
  members hold too (their rounds are trained again); (0, states) when no
  step is common. Raises RunError when damage left no good step."""
  damaged, step, restored = False, 0, states
  while True:
    common = set.intersection(*(set(c.steps()) for c in checkpoints))
    if not common:
      break
    candidate = max(common)
    loaded = [c.restore(candidate, s) for c, s in zip(checkpoints, states)]
    if all(r is not None for r in loaded):
      step, restored = candidate, loaded
      break
    damaged = True
  if damaged and not step:
    raise RunError(
        f'no checkpoint in {", ".join(c.directory for c in checkpoints)} '
        'could be restored (each was damaged, or holds a state laid out '
        'otherwise, as an older fedround saved it; they are in '
        f'{SET_ASIDE}/); move the workdir away to start over')
  for c in checkpoints:
    for later in [s for s in c.steps() if s > step]:
      c.set_aside(later, f'the run resumes from round {step}')
  return step, restored
