"""Multi-controller runs: two processes of 4 emulated CPU devices each
(localhost coordinator, gloo collectives) run scripts/train.py as one
8-device experiment and train what one process with 8 devices trains (with
a model mesh axis too);
killed mid-run and restarted, they resume; a coordinator that is not there
fails in one line within the wait."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fedavg_digits
from fedround import distributed, train
from fedround.sweep import set_field
from fedround.workdir import Checkpoints, RunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny_digits' training (conftest), as --config flags.
TINY = {'data.num_clients': 8, 'model': 'logistic', 'clients_per_round': 4,
        'client.local_steps': 2, 'eval_every': 2, 'checkpoint_every': 2,
        'progress': False}
# A robust rule under attack on a clients=4 x model=2 mesh: each client's
# model split over two devices of one process, each process saving its own
# shards. (FedAvg's check is the sweep's; SCAFFOLD's the killed run's.)
MEDIAN_SIGN_FLIP = {'aggregator': 'median', 'attack.name': 'sign_flip',
                    'attack.fraction': 0.25, 'mesh.clients': 4,
                    'mesh.model': 2}
SCAFFOLD = {'client.algorithm': 'scaffold'}


def _tail(stderr: str) -> str:
  return stderr.strip().splitlines()[-1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir, overrides: dict, num_processes=2, devices=4,
           timeout_s=60, process_ids=None, script='train.py', extra=()):
  """Processes ``process_ids`` (default all) of a ``num_processes`` run of
  scripts/train.py, with ``devices`` emulated CPU devices each, joined at a
  localhost coordinator (or of ``script`` with ``extra`` arguments);
  ``workdir`` is every process's, or a list of each's."""
  workdirs = workdir if isinstance(workdir, list) else [workdir] * (
      num_processes)
  port = _free_port()
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 os.environ['XLA_FLAGS'])
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'{flags} --xla_force_host_platform_device_count={devices}'))
  return [subprocess.Popen(
      [sys.executable, f'scripts/{script}', *extra, '--config',
       'experiments/fedavg_digits.py', '--workdir', str(workdirs[i]),
       *[f'--config.{k}={v}' for k, v in {**TINY, **overrides}.items()],
       f'--coordinator_address=localhost:{port}',
       f'--num_processes={num_processes}', f'--process_id={i}',
       f'--distributed_timeout={timeout_s}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in (range(num_processes) if process_ids is None
                           else process_ids)]


def _finish(processes, timeout=300):
  outputs = [p.communicate(timeout=timeout) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


def _config(overrides: dict):
  config = fedavg_digits.get_config()
  for field, value in {**TINY, **overrides}.items():
    set_field(config, field, value)
  return config


def _saved(workdir, config, step):
  """The state the multi-process run checkpointed at ``step``, read back
  in this process (8 devices, one process)."""
  state, store = train.build(config).init_state()
  checkpoints = Checkpoints(str(workdir), config.keep_checkpoints)
  saved = checkpoints.restore(step, {'server': state, 'clients': store})
  checkpoints.close()
  assert saved is not None
  return saved


def _assert_same(saved, result):
  for got, want in zip(jax.tree.leaves(jax.device_get(saved)),
                       jax.tree.leaves(jax.device_get(
                           {'server': result.state,
                            'clients': result.store}))):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_two_processes_train_what_one_process_of_8_devices_trains(
    tmp_path):
  overrides = {**MEDIAN_SIGN_FLIP, 'rounds': 4}
  outputs = _finish(_start(tmp_path / 'two', overrides))
  # Process 0 alone reports; process 1 prints no summary.
  assert 'on 8 device(s)' in outputs[0][0]
  assert 'final test accuracy' not in outputs[1][0]
  config = _config(overrides)
  one = train.run(config, str(tmp_path / 'one'))
  _assert_same(_saved(tmp_path / 'two', config, 4), one)
  with open(tmp_path / 'two' / 'metrics.jsonl') as f:
    assert [int(line.split(',')[0].split(':')[1]) for line in f] == [
        1, 2, 3, 4]


def _newest_step(workdir):
  directory = workdir / 'checkpoints'
  if not directory.is_dir():
    return 0
  return max((int(n) for n in os.listdir(directory) if n.isdigit()),
             default=0)


def test_killed_processes_resume_and_train_what_one_process_trains(
    tmp_path):
  """SCAFFOLD (a per-client store split over both processes' devices),
  both processes killed once a checkpoint is down, restarted to train on:
  its parameters and store are one process's with 8 devices, uninterrupted
  (so this is also SCAFFOLD's two-processes-equal-one test)."""
  workdir = tmp_path / 'two'
  overrides = {**SCAFFOLD, 'rounds': 100_000}
  processes = _start(workdir, overrides)
  deadline = time.monotonic() + 300
  while _newest_step(workdir) < 2:
    assert all(p.poll() is None for p in processes), [
        p.communicate()[1][-3000:] for p in processes]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  for p in processes:
    p.send_signal(signal.SIGKILL)
    p.communicate()
  rounds = _newest_step(workdir) + 2
  outputs = _finish(_start(workdir, {**overrides, 'rounds': rounds}))
  assert f'resuming after round {rounds - 2}' in outputs[0][1]
  config = _config({**overrides, 'rounds': rounds})
  _assert_same(_saved(workdir, config, rounds),
               train.run(config, str(tmp_path / 'one')))


def test_an_absent_coordinator_fails_in_one_line_within_the_wait(tmp_path):
  begin = time.monotonic()
  [process] = _start(tmp_path / 'run', {}, timeout_s=3, process_ids=[1])
  _, err = process.communicate(timeout=120)
  assert process.returncode == 1
  assert _tail(err).startswith('error: coordinator localhost:')
  assert 'could not be reached within 3 s' in err
  assert time.monotonic() - begin < 60


def test_a_failing_process_stops_the_others(tmp_path):
  """Process 1 cannot use its workdir (a file): it exits at once with its
  one-line error, and process 0, left waiting for it, stops once its
  heartbeats have been missing for --distributed_timeout."""
  begin = time.monotonic()
  (tmp_path / 'a_file').write_text('')
  processes = _start([tmp_path / 'run', tmp_path / 'a_file'],
                     {'rounds': 4}, timeout_s=10)
  errors = [p.communicate(timeout=120)[1] for p in processes]
  assert [p.returncode != 0 for p in processes] == [True, True]
  assert _tail(errors[1]) == (f'error: workdir {tmp_path / "a_file"} is a '
                              'file, not a directory; name a directory (it '
                              'is created if missing)')
  assert 'stopped sending heartbeats' in errors[0]
  assert time.monotonic() - begin < 90


def test_a_sweep_over_two_processes_trains_what_one_process_trains(
    tmp_path):
  """scripts/sweep.py's FedAvg runs, each trained by both processes in
  turn, equal one process with 8 devices; only process 0 reports."""
  outputs = _finish(_start(tmp_path / 'sweep', {'rounds': 2},
                           script='sweep.py', extra=('--sweep', 'seed=[0, 1]')))
  assert '2 runs: 2 finished, 0 already done, 0 failed' in outputs[0][0]
  assert 'runs:' not in outputs[1][0]
  config = _config({'rounds': 2, 'seed': 1})
  _assert_same(_saved(tmp_path / 'sweep' / 'seed=1', config, 2),
               train.run(config, str(tmp_path / 'one')))


@pytest.mark.parametrize('arguments, message', [
    (dict(coordinator_address='localhost:1234'),
     'a multi-process run needs all of --coordinator_address'),
    (dict(coordinator_address='localhost:1234', num_processes=2,
          process_id=2), '--process_id must be in [0, --num_processes=2), '
                         'got 2'),
    (dict(coordinator_address='localhost', num_processes=2, process_id=1),
     "--coordinator_address must be host:port, got 'localhost'"),
    (dict(coordinator_address='localhost:1234', num_processes=2,
          process_id=0, auto=True), '--distributed detects the cluster'),
])
def test_bad_distributed_flags_fail_in_one_line_before_joining(arguments,
                                                               message):
  with pytest.raises(RunError) as error:
    distributed.initialize(**arguments)
  assert str(error.value).startswith(message)
  assert '\n' not in str(error.value)
  assert not jax.distributed.is_initialized()
