"""Federated data sets, partitions and participation models, by name."""
from fedround.data.arrays import npy
from fedround.data.digits import digits
from fedround.data.federated import ClientData, FederatedData
from fedround.data.fedjax_sqlite import fedjax_sqlite
from fedround.data.fedjax_text import fedjax_shakespeare, fedjax_stackoverflow
from fedround.data.leaf import leaf
from fedround.data.participation import (Participation, bernoulli, cyclic,
                                         markov, uniform)
from fedround.data.synthetic import synthetic
from fedround.data.tfds_images import tfds_images
from fedround.data.tff_sqlite import tff_sqlite
from fedround.registry import Registry

DATASETS = Registry('data set')
DATASETS.register('synthetic')(synthetic)
DATASETS.register('digits')(digits)
DATASETS.register('leaf')(leaf)
DATASETS.register('fedjax_sqlite')(fedjax_sqlite)
DATASETS.register('fedjax_shakespeare')(fedjax_shakespeare)
DATASETS.register('fedjax_stackoverflow')(fedjax_stackoverflow)
DATASETS.register('tfds')(tfds_images)
DATASETS.register('tff_sqlite')(tff_sqlite)
DATASETS.register('npy')(npy)

PARTICIPATION = Registry('participation model')
PARTICIPATION.register('uniform')(uniform)
PARTICIPATION.register('bernoulli')(bernoulli)
PARTICIPATION.register('markov')(markov)
PARTICIPATION.register('cyclic')(cyclic)

__all__ = ['DATASETS', 'PARTICIPATION', 'ClientData', 'FederatedData', 'Participation',
           'digits', 'synthetic', 'uniform']
