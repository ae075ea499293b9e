"""Next-token prediction: FedJAX's text preprocessing by hand, the metric
that ignores padding, OOV, BOS and EOS exactly, and FedJAX SQLite text
files written here (Shakespeare snippets, Stack Overflow tokens with a
word-count file) loading client by client and training through train.run."""
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import on_files, write_fedjax_sqlite
from fedround import train
from fedround.data.text import (BOS, EOS, PAD, SHAKESPEARE_CHARACTERS,
                                WordTokenizer, shakespeare_sequences)
from fedround.registry import ConfigError
from fedround.tasks import TASKS


def test_shakespeare_sequences_as_fedjax_documents():
  """fedjax.datasets.shakespeare.preprocess_client's example: length 3,
  [b'ABCD', b'E'] -> inputs [[BOS, A, B], [C, D, EOS], [BOS, E, PAD]],
  targets [[A, B, C], [D, EOS, BOS], [E, EOS, PAD]]."""
  a, b, c, d, e = (3 + SHAKESPEARE_CHARACTERS.index(ch) for ch in b'ABCDE')
  x, y = shakespeare_sequences([b'ABCD', b'E'], 3)
  np.testing.assert_array_equal(x, [[BOS, a, b], [c, d, EOS], [BOS, e, PAD]])
  np.testing.assert_array_equal(y, [[a, b, c], [d, EOS, BOS], [e, EOS, PAD]])
  x, _ = shakespeare_sequences([b'\x00'], 3)  # not a known character
  assert x[0, 1] == 89  # OOV, the last of 90 ids


def test_word_tokenizer_truncates_and_pads():
  tokenizer = WordTokenizer(['a', 'b'])  # ids 3, 4; OOV 5
  assert tokenizer.size == 6
  x, y = tokenizer.sequences([b'a c b', b'b'], max_length=3)
  np.testing.assert_array_equal(x, [[BOS, 3, 5], [BOS, 4, PAD]])
  np.testing.assert_array_equal(y, [[3, 5, 4], [4, EOS, PAD]])


def test_next_token_accuracy_ignores_special_tokens_exactly():
  """Vocabulary of 6: PAD 0, BOS 1, EOS 2, words 3 and 4, OOV 5. Targets
  [4, 5, 2, 0] and [3, 1, 4, 0]; predictions [4, 5, 2, 3] and [4, 1, 4, 2].
  Scored targets: 4 (right) in row 0; 3 (wrong) and 4 (right) in row 1.
  The loss counts every non-PAD target: 3 and 3."""
  task = TASKS.build('next_token', 'config.task', num_classes=6)
  targets = jnp.array([[4, 5, 2, 0], [3, 1, 4, 0]])
  predicted = jnp.array([[4, 5, 2, 3], [4, 1, 4, 2]])
  logits = jnp.where(jnp.arange(6) == predicted[..., None], 2.0, 0.0)
  score = task.score(logits, targets)
  np.testing.assert_array_equal(score.correct, [1, 1])
  np.testing.assert_array_equal(score.accuracy_count, [1, 2])
  np.testing.assert_array_equal(score.loss_count, [3, 3])
  # Each target's loss: log(e^2 + 5) - 2 when predicted, log(e^2 + 5) not.
  hit, miss = np.log(np.e ** 2 + 5) - 2, np.log(np.e ** 2 + 5)
  np.testing.assert_allclose(score.loss, [3 * hit, 2 * hit + miss],
                             rtol=1e-6)
  valid = jnp.array([1.0, 0.0])  # the second sequence is padding
  np.testing.assert_allclose(task.cross_entropy(logits, targets, valid), hit,
                             rtol=1e-6)
  with pytest.raises(ConfigError, match=r'token ids in 0..5'):
    TASKS.build('next_token(oov=6)', 'config.task', num_classes=6)


def _snippets(rng, count):
  letters = np.frombuffer(SHAKESPEARE_CHARACTERS, np.uint8)
  return np.array([bytes(rng.choice(letters, rng.integers(5, 40)))
                   for _ in range(count)], dtype=object)


@pytest.fixture
def shakespeare(tmp_path):
  rng = np.random.default_rng(0)
  clients = lambda n, prefix: [
      (f'{prefix}{i}'.encode(), {'snippets': _snippets(rng, k)})
      for i, k in enumerate(rng.integers(2, 6, n))]
  train_clients, test_clients = clients(6, 'PLAY_'), clients(3, 'TEST_')
  write_fedjax_sqlite(tmp_path / 'train.sqlite', train_clients)
  write_fedjax_sqlite(tmp_path / 'test.sqlite', test_clients)
  return tmp_path, train_clients, test_clients


def _shakespeare_config(path, model):
  config = on_files({'name': 'fedjax_shakespeare',
                     'train_path': str(path / 'train.sqlite'),
                     'test_path': str(path / 'test.sqlite'),
                     'sequence_length': 16})
  config.task, config.model = 'next_token', model
  return config


def test_shakespeare_clients_are_their_snippets(shakespeare):
  path, train_clients, test_clients = shakespeare
  data = train.load_data(_shakespeare_config(path, 'lstm_lm'))
  assert data.num_clients == 6 and data.num_classes == 90
  for i, (_, features) in enumerate(train_clients):
    x, y = data.train.client(i)
    expected = shakespeare_sequences(list(features['snippets']), 16)
    np.testing.assert_array_equal(x, expected[0])
    np.testing.assert_array_equal(y, expected[1])
  assert len(data.test_y) == sum(
      len(shakespeare_sequences(list(f['snippets']), 16)[0])
      for _, f in test_clients)


@pytest.mark.parametrize('model', [
    'lstm_lm(embed=8, hidden=(32,))',
    'transformer_lm(width=32, depth=1, heads=2, mlp=64, max_length=16)'])
def test_next_token_models_train_on_shakespeare(shakespeare, tmp_path, model):
  path, _, _ = shakespeare
  config = _shakespeare_config(path, model)
  config.rounds = 3
  config.client.learning_rate = 0.5
  result = train.run(config, str(tmp_path / 'run'))
  assert int(result.state.round) == 3
  assert 0 <= result.summary['final_test_accuracy'] <= 1
  assert np.isfinite(result.summary['final_test_loss'])


def test_stackoverflow_uses_the_word_counts(tmp_path):
  vocab = tmp_path / 'stackoverflow.word_count'
  vocab.write_text('the 900\nto 700\ni 500\ncode 20\n')
  posts = lambda *texts: {'tokens': np.array(texts, dtype=object),
                          'type': np.array([b'question'] * len(texts),
                                           dtype=object)}
  write_fedjax_sqlite(tmp_path / 'train.sqlite', [
      (b'1', posts(b'i wrote the code', b'to the')),
      (b'2', posts(b'code code code'))])
  write_fedjax_sqlite(tmp_path / 'test.sqlite', [(b'3', posts(b'the end'))])
  config = on_files({'name': 'fedjax_stackoverflow',
                     'train_path': str(tmp_path / 'train.sqlite'),
                     'test_path': str(tmp_path / 'test.sqlite'),
                     'vocab_path': str(vocab), 'vocab_size': 3,
                     'max_length': 4})
  data = train.load_data(config)
  assert data.num_classes == 3 + 3 + 1  # PAD, BOS, EOS, 3 words, OOV
  # the 3, to 4, i 5; code and wrote are OOV (6).
  np.testing.assert_array_equal(data.train.client(0)[0],
                                [[BOS, 5, 6, 3], [BOS, 4, 3, PAD]])
  np.testing.assert_array_equal(data.train.client(0)[1],
                                [[5, 6, 3, 6], [4, 3, EOS, PAD]])
  np.testing.assert_array_equal(data.train.client(1)[1], [[6, 6, 6, EOS]])
  np.testing.assert_array_equal(data.test_y, [[3, 6, EOS, PAD]])
  config.data.vocab_size = 10
  with pytest.raises(ConfigError, match=r'lists 4 words; vocab_size asks '
                     'for 10'):
    train.load_data(config)


def test_text_task_mistakes_fail_before_training(shakespeare):
  path, _, _ = shakespeare
  config = _shakespeare_config(path, 'lstm_lm')
  config.task = 'classification'
  with pytest.raises(ConfigError, match=r"config.task 'classification' "
                     r'needs labels that are one integer per example'):
    train.check(config)
  config = _shakespeare_config(path, 'logistic')
  with pytest.raises(ConfigError, match=r"config.model 'logistic' outputs "
                     r'\(2, 90\) for a batch of 2; config.task '
                     r"'next_token' needs \(2, 16, 90\)"):
    train.check(config)
  config = _shakespeare_config(path, 'lstm_lm')
  config.client.loss = 'fedld_margin'
  with pytest.raises(ConfigError, match='fedld_margin is a classification '
                     'loss; the task is next_token'):
    train.check(config)
