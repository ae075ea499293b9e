"""Divergence is seen, not hidden: a host-side watch over each round's metrics.

A round is unhealthy when every participating client was excluded as
non-finite, when the round refused a non-finite aggregate or model (the
server kept its last one), or when the honest clients' train loss exceeds
``loss_explosion`` times its running minimum. Each metrics row carries
``unhealthy_rounds``, the length of the current streak (0 when healthy);
after ``halt_after`` unhealthy rounds in a row the run stops.
"""
from __future__ import annotations

import math


class Watch:
  """The watch over one run, resumed from its metrics ``history``."""

  def __init__(self, loss_explosion: float, halt_after: int,
               history: list[dict]):
    self.loss_explosion = loss_explosion
    self.halt_after = halt_after
    losses = [r['train_loss'] for r in history
              if math.isfinite(r.get('train_loss', math.nan))]
    self.lowest_loss = min(losses, default=math.inf)
    self.streak = int(history[-1].get('unhealthy_rounds', 0)) if history else 0
    self.reason = None
    self.halted_at = None  # the round whose streak reached halt_after
    self.halt_reason = None  # and its reason (later rows may be healthy)

  def _problem(self, row: dict) -> str | None:
    if row['participants'] > 0 and (row['nonfinite_excluded']
                                    >= row['participants']):
      return 'every client sent a non-finite update'
    if row['aggregate_refused']:
      return 'the aggregate was not finite, so the model did not move'
    loss = row['train_loss']
    if math.isfinite(loss) and loss > self.loss_explosion * self.lowest_loss:
      return (f'the train loss {loss:.4g} exploded past '
              f'{self.loss_explosion:g} x its running minimum '
              f'{self.lowest_loss:.4g}')
    if math.isinf(loss):
      return 'the train loss is infinite'
    return None

  def observe(self, row: dict) -> None:
    """Judges one round's metrics row and adds ``unhealthy_rounds`` to it."""
    problem = self._problem(row)
    if math.isfinite(row['train_loss']):
      self.lowest_loss = min(self.lowest_loss, row['train_loss'])
    self.streak = self.streak + 1 if problem else 0
    self.reason = problem or self.reason if self.streak else None
    row['unhealthy_rounds'] = self.streak
    if self.streak >= self.halt_after and self.halted_at is None:
      self.halted_at, self.halt_reason = row['round'], self.reason

  @property
  def halted(self) -> bool:
    return self.halted_at is not None
