"""FedLAW (Li et al., ICML 2023) vs FedAvg: the server learns a shrinking
factor gamma and the clients' relative weights on a small class-balanced
proxy set each round. The paper finds the learned gamma < 1 (global weight
shrinking) and better accuracy than FedAvg. The official code's settings:
20 clients in full participation, the server's Adam on gamma and the
lambdas at lr 0.005 (0.01 is its CIFAR-10 setting). Digits, Dirichlet label
skew, a class-balanced proxy set of 5% of the test split (2 examples a
class: 20; held out of evaluation for both rules, so they are scored on the
same examples), on the CNN with and without group normalisation: under a
norm layer, scaling a conv layer's weights leaves the function unchanged,
as under the paper's batch norm.

  python scripts/sweep.py --config experiments/fedlaw.py --workdir runs/fedlaw \
      --replicas seeds
  python scripts/report.py runs/fedlaw --task data.alpha --task model \
      --curve aggregator.gamma --out runs/fedlaw/report
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import product, sweep

FEDLAW = 'fedlaw(learning_rate=0.005)'  # the official lr off CIFAR-10


def get_config(arg=None):
  variant = parse_variant(arg, rule='fedlaw', alpha=0.1, norm='none')
  config = base_config()
  config.data = data('digits', num_clients=20, alpha=variant.alpha,
                     seed=0, proxy_fraction=0.05)
  config.model = f'cnn(norm={variant.norm!r})'
  config.rounds = 100
  config.clients_per_round = 20  # full participation, as the official code
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.1
  config.client.batch_size = 10
  config.client.local_steps = 10
  config.client.local_epochs = 0
  config.aggregator = {'fedlaw': FEDLAW, 'fedavg': 'weighted_mean'}[
      variant.rule]
  config.eval_every = 5
  config.checkpoint_every = 50
  return config


def get_sweep():
  return product(sweep('data.alpha', [0.1, 0.5]),
                 sweep('model', ["cnn(norm='none')", "cnn(norm='group')"]),
                 sweep('aggregator', ['weighted_mean', FEDLAW]),
                 sweep('seed', [0, 1, 2]))
