"""LEAF's JSON federations: files written here in LEAF's layout (train/ and
test/ of {"users", "num_samples", "user_data"}, as its FEMNIST scripts
write them) load user by user, train through train.run, and bad files fail
in one line naming the file."""
import json
import os

import numpy as np
import pytest

from conftest import on_files
from fedround import train
from fedround.registry import ConfigError

SHAPE = (8, 8, 1)


def _write_split(directory, users, files=2):
  """``users`` (name -> (x, y)) over ``files`` JSON files, x rows flattened
  as LEAF stores FEMNIST's 28 x 28 images."""
  os.makedirs(directory)
  names = list(users)
  for f in range(files):
    mine = names[f::files]
    # user_data in the reverse order of users: the reader follows users.
    blob = {'users': mine, 'num_samples': [len(users[u][1]) for u in mine],
            'user_data': {u: {'x': users[u][0].reshape(
                len(users[u][0]), -1).tolist(), 'y': users[u][1].tolist()}
                          for u in reversed(mine)}}
    with open(os.path.join(directory, f'all_data_{f}_niid_0_keep_0_'
                                      f'train_9.json'), 'w') as out:
      json.dump(blob, out)


def _federation(path, num_users=6, seed=0):
  """A LEAF directory of ``num_users`` users of 8x8 images (10 classes),
  unequal sizes; returns (train users, test users) as written."""
  rng = np.random.default_rng(seed)
  splits = {}
  for split, low, high in (('train', 4, 12), ('test', 1, 4)):
    splits[split] = {
        f'f{u:04d}_{u % 3}': (
            rng.uniform(size=(n, *SHAPE)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))
        for u, n in enumerate(rng.integers(low, high, num_users))}
    _write_split(os.path.join(path, split), splits[split])
  return splits['train'], splits['test']


def _config(path, **data):
  return on_files({'name': 'leaf', 'path': str(path), 'num_classes': 10,
                   'example_shape': SHAPE, **data})


def test_users_become_clients_and_the_test_split_is_pooled(tmp_path):
  users, test = _federation(tmp_path)
  data = train.load_data(_config(tmp_path))
  # Files in name order, users in file order: 0, 2, 4 then 1, 3, 5.
  order = list(users)[0::2] + list(users)[1::2]
  assert data.num_clients == len(users)
  np.testing.assert_array_equal(data.n, [len(users[u][1]) for u in order])
  for i, user in enumerate(order):
    for stored, written in zip(data.train.client(i), users[user]):
      np.testing.assert_array_equal(stored, written)
  test_order = list(test)[0::2] + list(test)[1::2]
  np.testing.assert_array_equal(
      data.test_y, np.concatenate([test[u][1] for u in test_order]))
  np.testing.assert_allclose(
      data.test_x, np.concatenate([test[u][0] for u in test_order]))
  inverted = train.load_data(_config(tmp_path, invert=True))
  np.testing.assert_allclose(inverted.test_x, 1 - np.asarray(data.test_x))
  # Without a shape the rows stay as stored.
  flat = train.load_data(_config(tmp_path, example_shape=()))
  assert flat.example_shape == (64,)


def test_a_leaf_federation_trains(tmp_path):
  _federation(tmp_path)
  result = train.run(_config(tmp_path), str(tmp_path / 'run'))
  assert result.summary['rounds'] == 2
  assert np.isfinite(result.summary['final_test_loss'])


def _edit_first_file(path, edit):
  directory = path / 'train'
  name = sorted(os.listdir(directory))[0]
  file = directory / name
  blob = json.loads(file.read_text())
  text = edit(blob)
  file.write_text(text if isinstance(text, str) else json.dumps(blob))
  return name


def _first_user(blob):
  return blob['user_data'][blob['users'][0]]


@pytest.mark.parametrize('edit, message', [
    (lambda b: '{"users": [', r'not JSON \(Expecting value at line 1\)'),
    (lambda b: b.pop('user_data'), 'expected the LEAF keys users, '
     'num_samples, user_data; missing user_data'),
    (lambda b: b['num_samples'].pop(), r'3 users but 2 num_samples'),
    (lambda b: b['num_samples'].__setitem__(0, 99),
     r"holds \d+ examples but num_samples says 99"),
    (lambda b: _first_user(b).update(x=[], y=[]),
     'holds no examples; every client needs at least one'),
    (lambda b: _first_user(b)['y'].__setitem__(0, 10),
     r'has label 10; valid labels: 0..9 \(num_classes=10\)'),
    (lambda b: _first_user(b).update(x=[[0.5] * 63] * len(
        _first_user(b)['y'])),
     r'rows of 63 values cannot be shaped \(8, 8, 1\)'),
    (lambda b: _first_user(b).update(x=['to be or not'] * len(
        _first_user(b)['y'])), 'x must be rows of numbers'),
    (lambda b: _first_user(b).update(y=['a'] * len(_first_user(b)['y'])),
     'y must be a list of integer labels'),
    (lambda b: _first_user(b)['x'].pop(), r'has \d+ x rows and \d+ labels'),
    (lambda b: b['user_data'].pop(b['users'][0]), 'has no entry in user_data'),
    (lambda b: b.update(users='f0000_0'), 'expected users a list of names'),
    (lambda b: b.update(users=b['users'][:1] * 3),
     'is listed twice in users'),
])
def test_bad_files_fail_in_one_line_naming_the_file(edit, message, tmp_path):
  _federation(tmp_path)
  name = _edit_first_file(tmp_path, edit)
  with pytest.raises(ConfigError, match=message) as error:
    train.check(_config(tmp_path))
  text = str(error.value)
  assert '\n' not in text and text.startswith("config.data: data set 'leaf'")
  assert name in text


def test_missing_directories_are_named(tmp_path):
  with pytest.raises(ConfigError, match='no such directory; expected a LEAF'):
    train.check(_config(tmp_path / 'absent'))
  _federation(tmp_path)
  for name in os.listdir(tmp_path / 'test'):
    os.remove(tmp_path / 'test' / name)
  with pytest.raises(ConfigError, match=r'test: no LEAF \.json files'):
    train.check(_config(tmp_path))


def test_a_user_in_two_files_and_examples_of_two_shapes_are_refused(
    tmp_path):
  users, _ = _federation(tmp_path)
  files = sorted(os.listdir(tmp_path / 'train'))
  second = tmp_path / 'train' / files[1]
  blob = json.loads(second.read_text())
  first_user = list(users)[0]  # in the first file
  blob['users'][0] = first_user
  blob['user_data'][first_user] = blob['user_data'].pop(
      list(users)[1])
  second.write_text(json.dumps(blob))
  with pytest.raises(ConfigError, match=f"{files[1]}: user '{first_user}' "
                     'is also in another file'):
    train.check(_config(tmp_path))

  other = tmp_path / 'other'
  _federation(other)
  for name in os.listdir(other / 'test'):
    blob = json.loads((other / 'test' / name).read_text())
    for entry in blob['user_data'].values():
      entry['x'] = [row[:32] for row in entry['x']]
    (other / 'test' / name).write_text(json.dumps(blob))
  with pytest.raises(ConfigError, match=r'has examples of shape \(32,\), '
                     r'.* of shape \(64,\); every example must have one'):
    train.check(_config(other, example_shape=()))
