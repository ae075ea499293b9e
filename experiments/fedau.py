"""FedAU vs the averaging baselines under unknown, heterogeneous
participation (Wang & Ji, ICLR 2024): digits, 50 clients with Dirichlet(0.1)
label skew, each taking part with its own probability p_i (mean 0.1, floor
0.02) tied to its label mix, so averaging only the participants
over-represents some labels.

One run:

  python scripts/train.py --config experiments/fedau.py:participation=markov,rule=fedau \
      --workdir runs/fedau_one

The grid (participation x rule x 3 seeds, seeds as vmapped replicas), then
its table and curves (one panel per participation model) of test accuracy
and of the global training objective (1/N) sum_i F_i(w) over all N clients:

  python scripts/sweep.py --config experiments/fedau.py --workdir runs/fedau \
      --replicas seeds
  python scripts/report.py runs/fedau --task participation \
      --curve global_train_loss --curve aggregator.mean_weight \
      --out runs/fedau/report
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import product, sweep

RULES = {
    'fedau': 'fedau',                          # omega_i estimated online
    'participating': 'average_participating',  # divide by |S|
    'all': 'average_all',                      # divide by N
    'known_p': 'inverse_probability',          # omega_i = 1 / p_i, known
}
PARTICIPATION = ('bernoulli', 'markov', 'cyclic')


def get_config(arg=None):
  variant = parse_variant(arg, participation='bernoulli', rule='fedau')
  if variant.rule not in RULES:
    raise ValueError(f'rule={variant.rule!r}: valid rules: '
                     f'{", ".join(RULES)}')
  config = base_config()
  config.data = data('digits', num_clients=50, alpha=0.1, seed=0)
  config.model = 'cnn'
  config.participation = variant.participation
  config.clients_per_round = 16  # the buffer: cyclic needs 16 (mean + 4 sd)
  config.rounds = 300
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.05
  config.client.batch_size = 16
  config.client.local_steps = 5
  config.client.local_epochs = 0
  config.aggregator = RULES[variant.rule]
  config.eval_every = 10
  config.eval_train = True  # the objective FedAU targets: (1/N) sum_i F_i
  config.checkpoint_every = 100
  return config


def get_sweep():
  return product(sweep('participation', PARTICIPATION),
                 sweep('aggregator', list(RULES.values())),
                 sweep('seed', [0, 1, 2]))
