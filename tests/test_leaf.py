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


def _write_text_split(directory, users):
  """``users`` (name -> (x rows, y labels)) as one LEAF JSON file."""
  os.makedirs(directory)
  blob = {'users': list(users),
          'num_samples': [len(y) for _, y in users.values()],
          'user_data': {u: {'x': x, 'y': y} for u, (x, y) in users.items()}}
  (directory / 'all_data_niid_0_keep_0_train_9.json').write_text(
      json.dumps(blob))


def _shakespeare(path, length=12, seed=0):
  """LEAF Shakespeare: users' x strings of ``length`` letters, y the next."""
  from fedround.data.leaf import LETTERS
  rng = np.random.default_rng(seed)
  text = lambda n: ''.join(rng.choice(list(LETTERS), n))
  for split, sizes in (('train', (5, 3, 7, 4)), ('test', (2, 3))):
    _write_text_split(path / split, {
        f'THE_TEMPEST_{split}{u}': ([text(length) for _ in range(n)],
                                    [text(1) for _ in range(n)])
        for u, n in enumerate(sizes)})


def _sent140(path, seed=0):
  """LEAF Sent140: [id, date, query, user, text] rows and 0/1 labels, and
  an embs.json vocabulary as LEAF's get_embs.py writes it."""
  rng = np.random.default_rng(seed)
  words = ['the', 'good', 'day', "don't", 'rain', 'sad']
  vocabulary = path / 'embs.json'
  path.mkdir(exist_ok=True)
  vocabulary.write_text(json.dumps(
      {'vocab': words, 'emba': [[0.1] * 3 for _ in range(len(words) + 1)]}))
  tweet = lambda user: [
      '1467810369', 'Mon Apr 06 22:19:45 PDT 2009', 'NO_QUERY', user,
      ' '.join(rng.choice(words + ['Why', '!', ','], rng.integers(1, 12)))]
  for split, sizes in (('train', (4, 6, 3, 5)), ('test', (3, 2))):
    _write_text_split(path / split, {
        f'{split}user{u}': ([tweet(f'{split}user{u}') for _ in range(n)],
                            [int(v) for v in rng.integers(0, 2, n)])
        for u, n in enumerate(sizes)})
  return vocabulary


def _text_config(path, **data):
  config = on_files({'name': 'leaf', 'path': str(path), **data})
  config.shard = False
  return config


def test_shakespeare_letters_become_leaf_ids(tmp_path):
  """LEAF's word_to_indices / letter_to_vec, by hand: '\\n' is 0, ' ' 1,
  ',' 8, 'A'..'Z' 25..50, 'a'..'z' 53..78."""
  from fedround.data.leaf import LETTERS
  assert len(LETTERS) == 80
  _write_text_split(tmp_path / 'train', {'KING_LEAR_EDGAR': (
      ['To be,', 'or no\n'], ['\n', 'T'])})
  _write_text_split(tmp_path / 'test', {'KING_LEAR_FOOL': (['zzzzzz'], ['}'])})
  data = train.load_data(_text_config(tmp_path, num_classes=80,
                                      encoding='characters'))
  x, y = data.train.client(0)
  np.testing.assert_array_equal(x, [[44, 67, 1, 54, 57, 8],
                                    [67, 70, 1, 66, 67, 0]])
  np.testing.assert_array_equal(y, [0, 44])
  np.testing.assert_array_equal(data.test_y, [79])


def test_sent140_text_becomes_leaf_word_ids(tmp_path):
  """LEAF's line_to_indices by hand: words split off punctuation, unknown
  words (case counts) and padding are the id after the vocabulary's last;
  LEAF's embs.json and a GloVe .txt give the same ids."""
  (tmp_path / 'embs.json').write_text(json.dumps(
      {'vocab': ['the', 'good', 'day', "don't"], 'emba': [[0.0]] * 5}))
  (tmp_path / 'glove.txt').write_text(
      'the 0.1 0.2\ngood 0.3 0.4\nday 0.5 0.6\ndon\'t 0.7 0.8\n')
  row = lambda text: ['1', 'date', 'NO_QUERY', 'someone', text]
  _write_text_split(tmp_path / 'train', {'alice': (
      [row("The good day, don't!"), row('the the the the the the the the the')],
      [1, 0])})
  _write_text_split(tmp_path / 'test', {'bob': ([row('day')], [0])})
  for vocabulary in ('embs.json', 'glove.txt'):
    data = train.load_data(_text_config(
        tmp_path, num_classes=2, encoding='words', max_words=8,
        vocabulary_path=str(tmp_path / vocabulary)))
    x, y = data.train.client(0)
    np.testing.assert_array_equal(x, [[4, 1, 2, 4, 3, 4, 4, 4], [0] * 8])
    np.testing.assert_array_equal(y, [1, 0])
    np.testing.assert_array_equal(data.test_x, [[2] + [4] * 7])


def _trains(config, model, path):
  config.model = model
  result = train.run(config, str(path / 'run'))
  assert result.summary['rounds'] == 2
  assert np.isfinite(result.summary['final_test_loss'])


def test_a_sent140_federation_trains(tmp_path):
  vocabulary = _sent140(tmp_path)
  _trains(_text_config(tmp_path, num_classes=2, encoding='words',
                       max_words=6, vocabulary_path=str(vocabulary)),
          'lstm_classifier(vocabulary=7, embed=4, hidden=(8,), dense=8)',
          tmp_path)


@pytest.mark.slow
def test_leaf_shakespeare_trains_with_leafs_model(tmp_path):
  """LEAF's full Shakespeare model on 80-letter strings."""
  _shakespeare(tmp_path, length=80)
  _trains(_text_config(tmp_path, num_classes=80, encoding='characters'),
          'lstm_classifier', tmp_path)


@pytest.mark.parametrize('edit, data, message', [
    (lambda u: u['x'].__setitem__(0, 'Ab~' + u['x'][0][3:]), {},
     "character '~' is not one of LEAF's 80 letters"),
    (lambda u: u['y'].__setitem__(0, 'ab'), {},
     "y must be single characters, got 'ab'"),
    (lambda u: u['x'].__setitem__(0, 'short'), {},
     r'x strings of lengths \[5, 12\]; expected one length'),
    (lambda u: u['x'].__setitem__(0, 7), {}, 'expected strings of characters'),
    (lambda u: None, {'invert': True},
     "invert applies to encoding 'numbers' only, not 'characters'"),
    (lambda u: None, {'encoding': 'bytes'},
     "encoding must be one of numbers, characters, words, got 'bytes'"),
])
def test_bad_shakespeare_fails_in_one_line(tmp_path, edit, data, message):
  _shakespeare(tmp_path)
  file = next((tmp_path / 'train').iterdir())
  blob = json.loads(file.read_text())
  edit(blob['user_data'][blob['users'][0]])
  file.write_text(json.dumps(blob))
  with pytest.raises(ConfigError, match=message) as error:
    train.check(_text_config(
        tmp_path, **{'num_classes': 80, 'encoding': 'characters'} | data))
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('vocabulary, row, message', [
    ('', None, "vocabulary_path: encoding 'words' needs LEAF's embs.json"),
    ('absent.json', None, 'absent.json: cannot be read as a vocabulary'),
    ('empty.json', None, 'expected a non-empty list of words'),
    ('embs.json', ['1', 'text only'], r'x rows must be the 5 CSV fields'),
])
def test_bad_sent140_fails_in_one_line(tmp_path, vocabulary, row, message):
  _sent140(tmp_path)
  (tmp_path / 'empty.json').write_text('{"vocab": []}')
  if row:
    file = next((tmp_path / 'train').iterdir())
    blob = json.loads(file.read_text())
    blob['user_data'][blob['users'][0]]['x'][0] = row
    file.write_text(json.dumps(blob))
  with pytest.raises(ConfigError, match=message) as error:
    train.check(_text_config(
        tmp_path, num_classes=2, encoding='words',
        vocabulary_path=str(tmp_path / vocabulary) if vocabulary else ''))
  assert '\n' not in str(error.value)
