"""FRL (Mozaffari et al., "Every Vote Counts: Ranking-Based Training of
Federated Learning to Resist Poisoning Attacks", USENIX Security 2023, on
arXiv as "FRL: Federated Rank Learning"; ALGORITHMS.md section 4) against
FedAvg and the coordinate-wise trimmed mean, with 0, 10 and 20% of the
clients malicious, on digits.

FRL trains a supermask MLP (frozen signed-constant weights, trainable
scores, the top half of each layer's edges kept), sends rankings (0.48 of
the float32 bits) and aggregates them by Borda vote; its malicious clients
send reversed rankings, colluding as in FRL's code. FedAvg and
trimmed_mean(f=4) (FRL's robust baseline) train the same MLP with real
weights and biases and face optimal_ipm, the update attack that broke the
most rules in experiments/byzantine.py.

The federation: FRL used 1000 clients, 25 a round, on CIFAR-10 and MNIST;
digits has 1,437 training images, so 50 clients of about 29 (Dirichlet
alpha 1.0, FRL's non-iid degree) and 20 a round, as experiments/byzantine.py
does: enough voters that the 2 or 4 malicious ones expected at 10 or 20%
stay a minority, and trimmed_mean(f=4) trims 20% of a cohort. Local
training: 2 epochs of batch 8 (FRL's MNIST config). The scores train as in
FRL's code (FL_train.py, args.py): SGD at lr 0.4 x 0.999^round, momentum
0.9, weight decay 1e-4, the lr annealed by a cosine over the local epochs
(CosineAnnealingLR(T_max=epochs) stepped each epoch: 1, then 0.5). The
baselines' real weights train with plain SGD at lr 0.1 and FedAvg weighs
clients by examples (FRL's own FedAvg baseline takes the uniform mean with
FRL's SGD settings; here the baselines are the Byzantine grid's). Every
method's cohort is drawn again while half or more of it is malicious, as
FRL's code does for FRL and its baselines (attack.redraw_share = 0.5).
FRL's code runs 2,000 rounds; this grid runs 100.

One run (variants: method=frl|fedavg|trimmed_mean, fraction, attack):

  python scripts/train.py --config experiments/frl.py:method=frl,fraction=0.2 \
      --workdir runs/frl_one

FRL alone, 100 rounds: about 15 minutes for 3 seeds as replicas on 2 CPU
cores; the grid's results are in the README.

The grid (methods x malicious fraction 0, 10%, 20% x 3 seeds, seeds as
vmapped replicas), then its table, heatmap and curves:

  python scripts/sweep.py --config experiments/frl.py --workdir runs/frl \
      --replicas seeds
  python scripts/report.py runs/frl --task attack.fraction \
      --heatmap aggregator attack.fraction --curve uplink_bits \
      --out docs/frl
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import apply_overrides

# Each method: the config fields it sets, aggregator first (run names).
METHODS = {
    'frl': {'aggregator': 'frl_vote', 'client.message': 'ranks',
            'model': 'supermask_mlp',
            'client.optimizer': 'sgd(momentum=0.9, weight_decay=1e-4)',
            'client.learning_rate': 0.4,
            'client.schedule': 'exponential(rate=0.999)',
            'client.local_schedule': 'cosine'},
    'fedavg': {'aggregator': 'weighted_mean', 'client.message': 'identity',
               'model': 'mlp', 'client.optimizer': 'sgd',
               'client.learning_rate': 0.1},
    'trimmed_mean': {'aggregator': 'trimmed_mean(f=4)',
                     'client.message': 'identity', 'model': 'mlp',
                     'client.optimizer': 'sgd', 'client.learning_rate': 0.1},
}
# Each method's attack, kept at fraction 0 too (where nobody attacks), so
# that a method's runs share one label in the report.
ATTACKS = {'frl': 'reverse_ranking(collude=True)', 'fedavg': 'optimal_ipm',
           'trimmed_mean': 'optimal_ipm'}
FRACTIONS = (0.0, 0.1, 0.2)


def _overrides(method: str, fraction: float, attack: str = '') -> dict:
  return {'attack.fraction': fraction, **METHODS[method],
          'attack.name': attack or ATTACKS[method]}


def get_config(arg=None):
  variant = parse_variant(arg, method='frl', fraction=0.0, attack='')
  if variant.method not in METHODS:
    raise ValueError(f'method={variant.method!r}: valid methods: '
                     f'{", ".join(METHODS)}')
  config = base_config()
  config.data = data('digits', num_clients=50, alpha=1.0, seed=0)
  config.rounds = 100
  config.clients_per_round = 20
  config.client.batch_size = 8
  config.client.local_steps = 0
  config.client.local_epochs = 2
  config.attack.redraw_share = 0.5
  config.eval_every = 5
  # Collapse under attack is what this grid measures: the watch logs the
  # unhealthy rounds but stops a run only if all its rounds are unhealthy.
  config.halt_after = config.rounds
  config.checkpoint_every = 50
  return apply_overrides(config, _overrides(variant.method, variant.fraction,
                                            variant.attack))


def get_sweep():
  return [{**_overrides(method, fraction), 'seed': seed}
          for method in METHODS for fraction in FRACTIONS
          for seed in (0, 1, 2)]
