"""Federated data sets, partitions and participation models, by name."""
from fedround.data.digits import digits
from fedround.data.federated import FederatedData
from fedround.data.participation import Participation, uniform
from fedround.data.synthetic import synthetic
from fedround.registry import Registry

DATASETS = Registry('data set')
DATASETS.register('synthetic')(synthetic)
DATASETS.register('digits')(digits)

PARTICIPATION = Registry('participation model')
PARTICIPATION.register('uniform')(uniform)

__all__ = ['DATASETS', 'PARTICIPATION', 'FederatedData', 'Participation',
           'digits', 'synthetic', 'uniform']
