"""Runs that can be left alone: damaged checkpoints are set aside and the run
resumes from the newest good one (end to end through scripts/train.py), one
run per workdir, bad paths and changed round counts said in one line."""
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_digits
from fedround import train
from fedround.workdir import SET_ASIDE, RunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.num_clients=8', '--config.model=logistic',
        '--config.clients_per_round=4', '--config.client.local_steps=2',
        '--config.eval_every=2', '--config.checkpoint_every=2',
        '--config.progress=False']


def _train_cli(workdir, *args, config='experiments/fedavg_digits.py'):
  return subprocess.run(
      [sys.executable, 'scripts/train.py', '--config', config, '--workdir',
       str(workdir), *TINY, *args], cwd=ROOT, capture_output=True, text=True,
      timeout=300)


def _error_line(out):
  """The one line a failed CLI run prints, asserting there is no traceback."""
  assert out.returncode != 0
  assert 'Traceback' not in out.stderr, out.stderr
  return out.stderr.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A workdir trained 4 rounds by the CLI, checkpoints at rounds 2 and 4."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  out = _train_cli(workdir, '--config.rounds=4')
  assert out.returncode == 0, out.stderr
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  return workdir


def _copy(trained, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  os.remove(workdir / 'lock')
  return workdir


def _truncate_files(step_dir):
  for folder, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(folder, name), 'r+b') as f:
        f.truncate(max(os.path.getsize(f.name) // 3, 1))


def _remove_metadata(step_dir):
  found = [os.path.join(folder, name) for folder, _, files in os.walk(step_dir)
           for name in files if name == '_METADATA']
  assert found
  for path in found:
    os.remove(path)


def _remove_item(step_dir):
  items = [p for p in os.listdir(step_dir) if os.path.isdir(step_dir / p)]
  assert items
  for item in items:
    shutil.rmtree(step_dir / item)


def _poison(step_dir):
  """Saves the step again with NaN global parameters."""
  checkpointer = ocp.StandardCheckpointer()
  item = next(p for p in os.listdir(step_dir) if os.path.isdir(step_dir / p))
  state = checkpointer.restore(step_dir / item)
  state['server']['params'] = jax.tree.map(lambda x: np.full_like(x, np.nan),
                                           state['server']['params'])
  shutil.rmtree(step_dir / item)
  checkpointer.save(step_dir / item, state)
  checkpointer.wait_until_finished()


@pytest.mark.parametrize('via', [
    'run', pytest.param('cli', marks=pytest.mark.slow)])
@pytest.mark.parametrize('damage', [_truncate_files, _remove_metadata,
                                    _remove_item, _poison])
def test_a_damaged_latest_step_is_set_aside_and_the_run_resumes(
    damage, via, trained, tmp_path):
  """Through scripts/train.py under `slow`; make test resumes the same
  damaged workdirs through train.run, the code the script calls (the
  script's own one-line errors are checked below)."""
  workdir = _copy(trained, tmp_path)
  damage(workdir / 'checkpoints' / '4')
  if via == 'cli':
    out = _train_cli(workdir, '--config.rounds=6')
    assert out.returncode == 0, out.stderr
    assert 'set aside' in out.stderr
    assert 'resuming after round 2' in out.stderr
  else:
    train.run(tiny_digits(6), str(workdir))
  assert os.listdir(workdir / SET_ASIDE) == ['4']
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['resumed_from'] == 2 and summary['rounds'] == 6
  assert np.isfinite(summary['final_test_loss'])
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['round'] for r in rows] == list(range(1, 7))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['4', '6']


def test_a_leftover_temporary_save_is_set_aside(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  leftover = workdir / 'checkpoints' / '6.orbax-checkpoint-tmp-1733000000'
  leftover.mkdir()
  (leftover / 'half_written').write_bytes(b'\0' * 10)
  out = _train_cli(workdir, '--config.rounds=6')
  assert out.returncode == 0, out.stderr
  assert 'interrupted save' in out.stderr
  assert os.listdir(workdir / SET_ASIDE) == [leftover.name]
  assert json.loads((workdir / 'summary.json').read_text())[
      'resumed_from'] == 4


def test_no_good_step_stops_with_one_line_naming_the_folder(trained,
                                                           tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in ('2', '4'):
    _truncate_files(workdir / 'checkpoints' / step)
  line = _error_line(_train_cli(workdir, '--config.rounds=6'))
  assert line.startswith('error: no checkpoint in ')
  assert str(workdir / 'checkpoints') in line
  assert sorted(os.listdir(workdir / SET_ASIDE)) == ['2', '4']


def test_a_checkpoint_of_another_layout_is_refused_in_one_line(trained,
                                                              tmp_path):
  """Steps saved as fedround saved them before the per-client store left
  the server state (the state alone, no {'server', 'clients'}) are set
  aside, and the run stops with one line saying why."""
  workdir = _copy(trained, tmp_path)
  checkpointer = ocp.StandardCheckpointer()
  for step in ('2', '4'):
    step_dir = workdir / 'checkpoints' / step
    item = next(p for p in os.listdir(step_dir)
                if os.path.isdir(step_dir / p))
    state = checkpointer.restore(step_dir / item)
    shutil.rmtree(step_dir / item)
    checkpointer.save(step_dir / item, state['server'])
    checkpointer.wait_until_finished()
  with pytest.raises(RunError) as error:
    train.run(tiny_digits(6), str(workdir))
  message = str(error.value)
  assert '\n' not in message and 'laid out otherwise' in message
  assert message.startswith(f'no checkpoint in {workdir / "checkpoints"}')
  assert sorted(os.listdir(workdir / SET_ASIDE)) == ['2', '4']


def test_a_non_finite_state_is_never_saved(tmp_path):
  """The Checkpoints layer refuses to save a NaN state over a good one."""
  from fedround.workdir import Checkpoints
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  assert checkpoints.save(1, {'w': np.ones(3, np.float32)})
  assert not checkpoints.save(2, {'w': np.full(3, np.nan, np.float32)})
  checkpoints.close()
  assert os.listdir(tmp_path / 'checkpoints') == ['1']


def test_a_second_run_on_a_workdir_refuses_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  first = subprocess.Popen(
      [sys.executable, 'scripts/train.py', '--config',
       'experiments/fedavg_digits.py', '--workdir', str(workdir), *TINY,
       '--config.rounds=40'], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  lock = workdir / 'lock'
  deadline = time.time() + 120
  while not (lock.exists() and lock.read_text().strip()):
    assert time.time() < deadline and first.poll() is None
    time.sleep(0.05)
  with pytest.raises(RunError, match=rf'in use by another run \(pid '
                     rf'{first.pid}\)'):
    train.run(tiny_digits(40), str(workdir))
  _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['round'] for r in rows] == list(range(1, 41))


def test_a_stale_lock_is_taken_over(tmp_path):
  """A killed run leaves its pid in the lock file but holds no lock."""
  (tmp_path / 'lock').write_text('999999\n')
  assert train.run(tiny_digits(2), str(tmp_path)).summary['rounds'] == 2
  assert (tmp_path / 'lock').read_text().strip() == str(os.getpid())


def test_rounds_below_those_done_are_refused_and_a_rerun_keeps_timings(
    tmp_path):
  first = train.run(tiny_digits(4), str(tmp_path)).summary
  with pytest.raises(RunError, match=r'4 rounds are already trained, more '
                     r'than config.rounds=2'):
    train.run(tiny_digits(2), str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text())['rounds'] == 4
  again = train.run(tiny_digits(4), str(tmp_path)).summary
  assert again == first == json.loads((tmp_path / 'summary.json').read_text())
  longer = train.run(tiny_digits(6), str(tmp_path)).summary
  assert longer['resumed_from'] == 4 and longer['rounds'] == 6
  assert json.loads((tmp_path / 'config.json').read_text())['rounds'] == 6


def _unwritable_dir(tmp_path):
  """A directory this process cannot write to (root ignores modes)."""
  if os.geteuid() != 0:
    path = tmp_path / 'read_only'
    path.mkdir()
    path.chmod(0o555)
    return path
  for path in ('/sys/kernel', '/proc/self'):
    try:
      open(os.path.join(path, 'lock'), 'a+').close()
    except OSError:
      return path
  pytest.skip('no unwritable directory for root here')


@pytest.mark.parametrize('case, expected', [
    ('config', 'config error: --config experiments/missing.py: no such file'),
    ('file', 'is a file, not a directory'),
    ('unwritable', 'is not writable'),
])
def test_bad_paths_fail_in_one_line(case, expected, tmp_path):
  config, workdir = 'experiments/fedavg_digits.py', tmp_path / 'run'
  if case == 'config':
    config = 'experiments/missing.py'
  elif case == 'file':
    workdir.write_text('not a directory')
  else:
    workdir = _unwritable_dir(tmp_path)
  line = _error_line(_train_cli(workdir, '--config.rounds=2', config=config))
  assert expected in line
  assert line.count('\n') == 0


def _events(directory):
  """Every event in the TensorBoard files of ``directory``, oldest file
  first, read from their TFRecord framing (length, crc, event, crc)."""
  import struct
  from tensorboardX.proto import event_pb2
  events = []
  for name in sorted(os.listdir(directory)):
    data = (directory / name).read_bytes()
    offset = 0
    while offset < len(data):
      length, = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12:offset + 12 + length])
      events.append(event)
      offset += 12 + length + 4
  return events


def test_metrics_go_to_tensorboard_too_and_a_resume_purges_later_rounds(
    tmp_path):
  """Every metric of every round is a TensorBoard scalar equal to its
  metrics.jsonl value; the resumed run's events start by purging the
  rounds after the checkpoint it resumed from."""
  train.run(tiny_digits(2), str(tmp_path))
  train.run(tiny_digits(4), str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  events = _events(tmp_path / 'tensorboard')
  scalars = {(value.tag, event.step): value.simple_value
             for event in events for value in event.summary.value}
  for row in rows:
    for name, value in row.items():
      if name != 'round':
        np.testing.assert_allclose(scalars[name, row['round']], value,
                                   rtol=1e-6, err_msg=name)
  assert {step for _, step in scalars} == {1, 2, 3, 4}
  purges = [event.step for event in events
            if event.session_log.status == event.session_log.START]
  assert purges == [3]


def test_a_checkpoint_written_on_one_mesh_resumes_on_another(tmp_path):
  """SCAFFOLD's store, split over 8 devices when saved, restored onto one
  device (shard is a field a resume may change): the run goes on as one
  trained on one device from the start."""
  config = tiny_digits(rounds=2)
  config.client.algorithm = 'scaffold'
  config.shard = True
  train.run(config, str(tmp_path / 'moved'))
  config.rounds, config.shard = 4, False
  resumed = train.run(config, str(tmp_path / 'moved'))
  assert resumed.summary['resumed_from'] == 2
  assert resumed.summary['devices'] == 1
  assert {d for leaf in jax.tree.leaves(resumed.store)
          for d in leaf.devices()} == {jax.devices()[0]}
  straight = train.run(config, str(tmp_path / 'straight'))
  for got, want in zip(jax.tree.leaves((resumed.state, resumed.store)),
                       jax.tree.leaves((straight.state, straight.store))):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
