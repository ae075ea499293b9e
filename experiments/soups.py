"""Model soups (Wortsman et al., ICML 2022) of the clients' fine-tuned
models during FedAvg: greedy soup vs uniform soup vs the best single model.
Every 10 rounds every one of the 50 clients fine-tunes the global model
with its local training (50 SGD steps on its Dirichlet(0.1) label-skewed
digits); the server compares the global model, the client model best on
its proxy set (20% of the test split, 70 examples, held out of the test
accuracy), the uniform soup of all 50 and the greedy soup chosen on the
proxy set. (With 5%, 20 examples, the greedy soup overfits the proxy.)

  python scripts/soup.py --config experiments/soups.py --workdir runs/soups \
      --every 10 --seeds 0,1,2
  # variants: --config experiments/soups.py:alpha=0.5,local_steps=10
"""
from fedround.config import base_config, data, parse_variant


def get_config(arg=None):
  variant = parse_variant(arg, alpha=0.1, local_steps=50)
  config = base_config()
  config.data = data('digits', num_clients=50, alpha=variant.alpha,
                     seed=0, proxy_fraction=0.2)
  config.model = 'cnn'
  config.rounds = 100
  config.clients_per_round = 10
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.05
  config.client.batch_size = 10
  config.client.local_steps = variant.local_steps
  config.client.local_epochs = 0
  config.aggregator = 'weighted_mean'
  config.eval_every = 5
  config.checkpoint_every = 10
  return config
