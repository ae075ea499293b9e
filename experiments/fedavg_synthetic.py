"""FedAvg on FedProx's Synthetic(alpha, beta) with logistic regression.

The FedProx setting (Li et al., MLSys 2020): 30 users, 10 per round, batch
10, 20 local epochs, client lr 0.01. This is `make run`:

  python scripts/train.py --config experiments/fedavg_synthetic.py \
      --workdir runs/fedavg_synthetic
  # variants: --config experiments/fedavg_synthetic.py:alpha=1,beta=1
  #           --config experiments/fedavg_synthetic.py:iid=True

Its sweep (the README's): local epochs x aggregation x heterogeneity x seeds,
seeds as vmapped replicas, then a report with heterogeneity as the task:

  python scripts/sweep.py --config experiments/fedavg_synthetic.py \
      --workdir runs/sweep_synthetic --replicas seeds
  python scripts/report.py runs/sweep_synthetic --task data.alpha
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import product, sweep


def get_config(arg=None):
  variant = parse_variant(arg, alpha=0.5, beta=0.5, iid=False)
  config = base_config()
  config.data = data('synthetic', num_clients=30, alpha=variant.alpha,
                     beta=variant.beta, iid=variant.iid, seed=0)
  config.model = 'logistic'
  config.rounds = 200
  config.clients_per_round = 10
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.01
  config.client.batch_size = 10
  config.client.local_epochs = 20
  config.aggregator = 'weighted_mean'
  config.eval_every = 10
  config.checkpoint_every = 50
  return config


def get_sweep():
  heterogeneity = [{'data.alpha': a, 'data.beta': a} for a in (0.0, 0.5, 1.0)]
  return product(sweep('client.local_epochs', [1, 20]),
                 sweep('aggregator', ['weighted_mean', 'mean']),
                 heterogeneity,
                 sweep('seed', [0, 1, 2]))
