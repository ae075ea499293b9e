"""Momentum and drift correction across data heterogeneity
(ALGORITHMS.md section 5): FedAvg, FedAvgM, FedAdam, FedYogi (server
optimizers on the pseudo-gradient), FedProx, SCAFFOLD, FedAvg-M and
SCAFFOLD-M (client algorithms with state across rounds; on Synthetic also
FedProx at its paper's mu = 1), on digits with
Dirichlet label skew alpha in {0.05, 0.5, 100} (a CNN) and on FedProx's
Synthetic(alpha, beta) in {(0,0), (0.5,0.5), (1,1)} (logistic regression).

One run:

  python scripts/train.py --config experiments/momentum.py:data=digits,method=scaffold \
      --workdir runs/momentum_one

Each data set's grid (heterogeneity x method x 3 seeds, seeds as vmapped
replicas), then its table (final accuracy and rounds to the target test
accuracy) and accuracy curves, one panel per heterogeneity level:

  python scripts/sweep.py --config experiments/momentum.py:data=digits \
      --workdir runs/momentum_digits --replicas seeds
  python scripts/report.py runs/momentum_digits --task data.alpha \
      --target 0.8 --out docs/momentum/digits
  python scripts/sweep.py --config experiments/momentum.py:data=synthetic \
      --workdir runs/momentum_synthetic --replicas seeds
  python scripts/report.py runs/momentum_synthetic --task data.alpha \
      --target 0.85 --out docs/momentum/synthetic
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import product, sweep

# Each method: the config fields it sets; config.aggregator stays empty, so
# each client algorithm aggregates as its paper does (weighted_mean for
# FedAvg and FedProx, the uniform mean for SCAFFOLD, FedAvg-M, SCAFFOLD-M).
# Server learning rates were chosen
# once, on digits alpha=0.05 and Synthetic(1,1) with seed 0, from FedAvgM
# {0.05, 0.1, 0.3} at momentum 0.9 (Hsu et al. 2019: effective step
# lr/(1-momentum)) and FedAdam/Yogi {0.01, 0.03, 0.1} with eps 1e-3 (Reddi
# et al. 2021's grid); 0.3 and 0.03 won on both.
METHODS = {
    'fedavg': {'client.algorithm': 'fedavg'},
    'fedavgm': {'client.algorithm': 'fedavg',
                'server.optimizer': 'fedavgm(momentum=0.9)',
                'server.learning_rate': 0.3},
    'fedadam': {'client.algorithm': 'fedavg', 'server.optimizer': 'fedadam',
                'server.learning_rate': 0.03},
    'fedyogi': {'client.algorithm': 'fedavg', 'server.optimizer': 'fedyogi',
                'server.learning_rate': 0.03},
    'fedprox': {'client.algorithm': 'fedprox(mu=0.01)'},
    'scaffold': {'client.algorithm': 'scaffold'},
    'fedavg_m': {'client.algorithm': 'fedavg_m(beta=0.1)'},
    'scaffold_m': {'client.algorithm': 'scaffold_m(beta=0.1)'},
}
# FedProx's own setting on Synthetic (Li et al., MLSys 2020): mu = 1.
PAPER_SETTINGS = {
    'digits': {},
    'synthetic': {'fedprox_paper': {'client.algorithm': 'fedprox(mu=1.0)'}},
}
HETEROGENEITY = {
    'digits': [{'data.alpha': a} for a in (0.05, 0.5, 100.0)],
    'synthetic': [{'data.alpha': a, 'data.beta': a} for a in (0.0, 0.5, 1.0)],
}


def get_config(arg=None):
  variant = parse_variant(arg, data='digits', method='fedavg', alpha=0.5)
  methods = {**METHODS, **PAPER_SETTINGS.get(variant.data, {})}
  if variant.data not in HETEROGENEITY or variant.method not in methods:
    raise ValueError(f'data={variant.data!r}, method={variant.method!r}: '
                     f'valid data: {", ".join(HETEROGENEITY)}; valid '
                     f'methods: {", ".join(methods)}')
  config = base_config()
  if variant.data == 'digits':
    config.data = data('digits', num_clients=50, alpha=variant.alpha,
                       seed=0)
    config.model = 'cnn'
    config.rounds = 100
    config.client.learning_rate = 0.05
  else:
    config.data = data('synthetic', num_clients=30, alpha=variant.alpha,
                       beta=variant.alpha, seed=0)
    config.model = 'logistic'
    config.rounds = 200
    config.client.learning_rate = 0.01
  config.clients_per_round = 10
  config.client.optimizer = 'sgd'
  config.client.batch_size = 10
  config.client.local_steps = 20
  config.client.local_epochs = 0
  for field, value in methods[variant.method].items():
    section, name = field.split('.')
    config[section][name] = value
  config.eval_every = 5
  config.checkpoint_every = 50
  return config


def get_sweep(arg=None):
  data = parse_variant(arg, data='digits', method='fedavg', alpha=0.5).data
  methods = [*METHODS.values(), *PAPER_SETTINGS[data].values()]
  return product(HETEROGENEITY[data], methods, sweep('seed', [0, 1, 2]))
