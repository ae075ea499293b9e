"""Fisher-weighted merging (Matena & Raffel, NeurIPS 2022) vs plain
averaging of the client models, each round and one-shot. Each client also
sends the diagonal Fisher of its trained model; the server merges
sum_i n_i F_i w_i / sum_i n_i F_i. The paper's claim: Fisher merging beats
plain averaging, most when the models being merged differ (here: many
local steps on label-skewed clients).

  python scripts/sweep.py --config experiments/fisher.py --workdir runs/fisher \
      --replicas seeds
  python scripts/report.py runs/fisher --task client.local_steps \
      --out runs/fisher/report
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import product, sweep


def get_config(arg=None):
  variant = parse_variant(arg, rule='fisher_merging', local_steps=50)
  config = base_config()
  config.data = data('digits', num_clients=50, alpha=0.1, seed=0)
  config.model = 'cnn'
  config.rounds = 60
  config.clients_per_round = 10
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.05
  config.client.batch_size = 10
  config.client.local_steps = variant.local_steps
  config.client.local_epochs = 0
  config.aggregator = variant.rule
  config.eval_every = 5
  config.checkpoint_every = 30
  return config


def get_sweep():
  return product(sweep('client.local_steps', [10, 50]),
                 sweep('aggregator', ['weighted_mean', 'fisher_merging']),
                 sweep('seed', [0, 1, 2]))
