"""Which aggregation rule survives which attack: digits, 20 of 50 clients a
round, a CNN, every robust rule told to tolerate f = 4 (20% of the cohort).

One run:

  python scripts/train.py --config experiments/byzantine.py:rule=krum,attack=alie,fraction=0.2 \
      --workdir runs/byzantine_one

The grid (rules x attacks x Byzantine fraction 0, 10%, 20%; fraction 0 runs
once per rule, with no attack), then its table and heatmap:

  python scripts/sweep.py --config experiments/byzantine.py \
      --workdir runs/byzantine --jobs 2
  python scripts/report.py runs/byzantine \
      --heatmap aggregator attack.fraction attack.name \
      --task attack.fraction --task attack.name --out runs/byzantine

One rule's 19 scenarios, e.g. to add a rule to a finished grid:

  python scripts/sweep.py --config experiments/byzantine.py:rule=flag_rescaled \
      --workdir runs/byzantine --jobs 2
"""
from fedround.config import base_config, data, parse_variant
from fedround.sweep import chain, product, sweep

F = 4  # Byzantine clients each rule is told to tolerate (cohort of 20)

RULES = {
    'fedavg': 'weighted_mean',
    'median': 'median',
    'trimmed_mean': f'trimmed_mean(f={F})',
    'krum': f'krum(f={F})',
    'multi_krum': f'multi_krum(f={F})',
    'geometric_median': 'geometric_median',
    'centered_clipping': 'centered_clipping(tau=1.0)',
    'bulyan': f'bulyan(f={F})',
    'mda': f'mda(f={F})',
    'monna': f'monna(f={F})',
    'meamed': f'meamed(f={F})',
    'flag': 'flag(rank=8)',
    # Flag's direction at the median update norm (flag normalises updates).
    'flag_rescaled': 'flag_rescaled(rank=8)',
    'nnm_krum': f'nnm(f={F}) | krum(f={F})',
    'arc_trimmed_mean': f'arc(f={F}) | trimmed_mean(f={F})',
    'bucketing_median': 'bucketing(size=2) | median',
}

ATTACKS = ('sign_flip', 'ipm', 'alie', 'optimal_ipm', 'optimal_alie',
           'gaussian', 'nan', 'mimic', 'label_flip')


def get_config(arg=None):
  variant = parse_variant(arg, rule='fedavg', attack='none', fraction=0.0)
  if variant.rule not in RULES:
    raise ValueError(f'rule={variant.rule!r}: valid rules: '
                     f'{", ".join(RULES)}')
  config = base_config()
  config.data = data('digits', num_clients=50, alpha=0.5, seed=0)
  config.model = 'cnn'
  config.rounds = 100
  config.clients_per_round = 20
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.1
  config.client.batch_size = 10
  config.client.local_steps = 10
  config.client.local_epochs = 0
  config.aggregator = RULES[variant.rule]
  config.attack.name = variant.attack
  config.attack.fraction = variant.fraction
  config.eval_every = 10
  config.checkpoint_every = 50
  # Collapse under attack is what this grid measures: the watch logs the
  # unhealthy rounds but stops a run only if all its rounds are unhealthy.
  config.halt_after = config.rounds
  return config


def get_sweep(arg=None):
  """Every rule's 19 scenarios; with a variant ``rule=NAME``, that rule's
  only (to add a rule to a finished grid)."""
  rule = parse_variant(arg, rule='', attack='none', fraction=0.0).rule
  if rule and rule not in RULES:
    raise ValueError(f'rule={rule!r}: valid rules: {", ".join(RULES)}')
  rules = sweep('aggregator', [RULES[rule]] if rule else list(RULES.values()))
  honest = product(rules, [{'attack.name': 'none', 'attack.fraction': 0.0}])
  attacked = product(rules, sweep('attack.name', ATTACKS),
                     sweep('attack.fraction', [0.1, 0.2]))
  return chain(honest, attacked)
