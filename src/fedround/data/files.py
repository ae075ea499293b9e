"""What the readers of federations on disk (leaf, fedjax_sqlite) share:
their checks on one client's labels, and the federation built from the
clients they read. Every failure is a ValueError naming where it is."""
from __future__ import annotations

import numpy as np

from fedround.data.federated import FederatedData


def check_num_classes(num_classes) -> None:
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f'num_classes must be an integer >= 2, got '
                     f'{num_classes!r}')


def check_labels(where: str, y: np.ndarray, num_classes: int) -> None:
  """A client (``where``) holds examples, each labelled in 0..C - 1."""
  if len(y) == 0:
    raise ValueError(f'{where} holds no examples; every client needs at '
                     'least one')
  bad = y[(y < 0) | (y >= num_classes)]
  if bad.size:
    raise ValueError(f'{where} has label {int(bad[0])}; valid labels: '
                     f'0..{num_classes - 1} (num_classes={num_classes})')


def federation(train: dict, test: dict, num_classes: int,
               invert: bool) -> FederatedData:
  """The federation of ``train`` (where -> (x, y), a client each) with
  ``test``'s clients pooled as its test split; with ``invert``, x becomes
  1 - x. Every example must have one shape; token ids stay int32, other
  features become float32."""
  clients = {**train, **test}
  (first, (x0, _)), *rest = clients.items()
  for where, (x, _) in rest:
    if x.shape[1:] != x0.shape[1:]:
      raise ValueError(f'{where} has examples of shape {x.shape[1:]}, '
                       f'{first} of shape {x0.shape[1:]}; every example '
                       'must have one shape')
  flip = (lambda x: 1 - x) if invert else (lambda x: x)
  return FederatedData.from_clients(
      [flip(x) for x, _ in train.values()], [y for _, y in train.values()],
      flip(np.concatenate([x for x, _ in test.values()])),
      np.concatenate([y for _, y in test.values()]), num_classes=num_classes,
      x_dtype=np.int32 if np.issubdtype(x0.dtype, np.integer) else np.float32)
