"""TFDS image classification sets split over clients.

Reads a prepared TFDS data set through ``tfds.data_source`` (the
ArrayRecord format, random access, no TensorFlow needed to read), scales
its uint8 pixels to [0, 1] and partitions its train split over clients by
a PARTITIONS spec; the test split is pooled. Preparing a set needs
TensorFlow once: ``tfds build mnist --file_format=array_record``, or
``download=True`` here.
"""
from __future__ import annotations

import numpy as np

from fedround.data.federated import FederatedData
from fedround.data.partitions import PARTITIONS

DATASETS = ('mnist', 'emnist', 'fashion_mnist', 'cifar10', 'cifar100')


def tfds_images(dataset: str, partition: str = 'dirichlet(alpha=0.5)',
                num_clients: int = 100, label: str = 'label',
                data_dir: str = '', download: bool = False,
                seed: int = 0) -> FederatedData:
  """The train split of ``dataset`` (one of DATASETS, with a config suffix
  such as ``emnist/byclass`` where TFDS has one) over ``num_clients`` by
  ``partition`` (fedround.data.partitions: ``dirichlet(alpha)``, ``iid``,
  ``label_shards(shards_per_client)``, ``pachinko(alpha, beta)`` for
  cifar100), its test split pooled. ``label`` names the label feature
  (cifar100: ``label`` for the 100 fine classes or ``coarse_label`` for the
  20 coarse ones); ``data_dir`` is TFDS's (empty: its default)."""
  import tensorflow_datasets as tfds
  if dataset.split('/')[0] not in DATASETS:
    raise ValueError(f'dataset {dataset!r} is not one of the image sets '
                     f'{", ".join(DATASETS)}')
  try:
    builder = tfds.builder(dataset, data_dir=data_dir or None)
    if download:
      builder.download_and_prepare(file_format='array_record')
    splits = {split: builder.as_data_source(split)
              for split in ('train', 'test')}
  except Exception as e:  # TFDS raises many kinds; all mean "not readable"
    where = data_dir or 'the default TFDS data_dir'
    raise ValueError(
        f'cannot read {dataset!r} from {where} ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}); prepare it with '
        f'`tfds build {dataset} --file_format=array_record` (needs '
        'TensorFlow) or set data.download=True') from None
  features = builder.info.features
  if label not in features or not hasattr(features[label], 'num_classes'):
    labels = [k for k, f in features.items() if hasattr(f, 'num_classes')]
    raise ValueError(f'{dataset!r} has no class label {label!r}; its labels: '
                     f'{", ".join(labels)}')
  train_x, train = _read(splits['train'], label)
  test_x, test = _read(splits['test'], label)
  parts = PARTITIONS.build(partition, 'config.data.partition',
                           y=train[label], num_clients=num_clients,
                           seed=seed, coarse=train.get('coarse_label'))
  return FederatedData.from_clients(
      [train_x[p] for p in parts], [train[label][p] for p in parts],
      test_x, test[label], num_classes=features[label].num_classes)


def _read(source, label: str):
  """(x float32 in [0, 1], {label feature: int array}) of a data source."""
  examples = source.__getitems__(range(len(source)))
  x = np.stack([e['image'] for e in examples]).astype(np.float32) / 255
  labels = {k: np.array([e[k] for e in examples], np.int32)
            for k in (label, 'coarse_label') if k in examples[0]}
  return x, labels
