"""FedAvg with a small CNN on sklearn's digits, Dirichlet(0.5) label skew.

  python scripts/train.py --config experiments/fedavg_digits.py \
      --workdir runs/fedavg_digits
  # variants: --config experiments/fedavg_digits.py:alpha=0.05,model=mlp
"""
from fedround.config import base_config, data, parse_variant


def get_config(arg=None):
  variant = parse_variant(arg, alpha=0.5, model='cnn')
  config = base_config()
  config.data = data('digits', num_clients=50, alpha=variant.alpha,
                     seed=0)
  config.model = variant.model
  config.rounds = 100
  config.clients_per_round = 10
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.1
  config.client.batch_size = 10
  config.client.local_steps = 10
  config.client.local_epochs = 0
  config.aggregator = 'weighted_mean'
  config.eval_every = 10
  config.checkpoint_every = 50
  return config
