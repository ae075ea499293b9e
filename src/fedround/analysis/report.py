"""Sweep reports: tables, learning curves and a ranking of methods.

A sweep directory holds one sub-directory per run with ``overrides.json``
(config field -> value) and ``metrics.jsonl``. Runs are grouped by the
overrides: the *seed field* is averaged over, the *task fields* name the task
and the remaining overrides name the *method*. Standard deviations are sample
standard deviations over seeds (ddof=1) and NaN for a group of one seed.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any, Iterator, NamedTuple, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedround.analysis.rankings import RANKINGS, task_ranks
from fedround.registry import ConfigError

# Per-run metric -> whether higher is better.
METRICS = {
    'final_test_accuracy': True,
    'best_test_accuracy': True,
    'final_test_loss': False,
    'final_train_loss': False,
    # With config.eval_train: the global model on all N clients' own data.
    'final_global_train_loss': False,
    'final_global_train_accuracy': True,
    # With a target accuracy T: the first evaluated round whose test
    # accuracy is >= T; inf when the run never gets there.
    'rounds_to_target': False,
}
# Metric -> (digits, text for an infinite mean) in the table, where not
# the default (4 digits, 'inf').
CELL_FORMATS = {'rounds_to_target': (1, 'not reached')}
DEFAULT_SEED_FIELD = 'seed'
ALL_RUNS = '(all)'  # the one task when there are no task fields
CURVES = ('test_accuracy', 'train_loss')  # metrics.jsonl keys plotted


class Run(NamedTuple):
  """One finished or running run directory of a sweep."""
  name: str
  overrides: dict[str, Any]
  rows: list[dict]


class Group(NamedTuple):
  """Runs of one method on one task that differ only in their seed."""
  method: str
  task: str
  runs: list[Run]
  mean: dict[str, float]  # METRICS name -> mean over seeds
  std: dict[str, float]  # METRICS name -> sample std, NaN for one seed


def _run_dirs(sweep_dir: str) -> Iterator[tuple[str, str]]:
  if not os.path.isdir(sweep_dir):
    raise ConfigError(f'sweep directory {sweep_dir} does not exist')
  for name in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, name)
    if not name.startswith(('.', '_')) and os.path.isdir(path):
      yield name, path


def _parse_json(text: str, where: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{where}: invalid JSON ({e.msg})') from None


def load_runs(sweep_dir: str) -> list[Run]:
  """Runs with overrides.json and metrics.jsonl and without error.txt."""
  runs = []
  for name, path in _run_dirs(sweep_dir):
    files = {f: os.path.join(path, f)
             for f in ('overrides.json', 'metrics.jsonl', 'error.txt')}
    if os.path.exists(files['error.txt']) or not all(
        os.path.exists(files[f]) for f in ('overrides.json', 'metrics.jsonl')):
      continue
    with open(files['overrides.json']) as f:
      overrides = _parse_json(f.read(), files['overrides.json'])
    if not isinstance(overrides, dict):
      raise ConfigError(f'{files["overrides.json"]}: expected a JSON object '
                        'of config field -> value')
    with open(files['metrics.jsonl']) as f:
      rows = [_parse_json(line, f'{files["metrics.jsonl"]}:{i}')
              for i, line in enumerate(f, 1) if line.strip()]
    runs.append(Run(name, overrides, rows))
  return runs


def failed_runs(sweep_dir: str) -> dict[str, str]:
  """Run name -> last line of its error.txt, for runs that have one."""
  failed = {}
  for name, path in _run_dirs(sweep_dir):
    error_path = os.path.join(path, 'error.txt')
    if os.path.exists(error_path):
      with open(error_path) as f:
        lines = [line.strip() for line in f if line.strip()]
      failed[name] = lines[-1] if lines else '(empty error.txt)'
  return failed


def _last(rows: list[dict], key: str) -> float:
  """The last finite value of ``key`` (rounds where nobody trained log
  NaN), or NaN."""
  return next((r[key] for r in reversed(rows)
               if key in r and not math.isnan(r[key])), math.nan)


def rounds_to_target(rows: list[dict], target: float) -> float:
  """The first logged round whose test accuracy is >= ``target``, or inf."""
  return next((float(r['round']) for r in rows
               if r.get('test_accuracy', -math.inf) >= target), math.inf)


def run_metrics(run: Run, target: float | None = None) -> dict[str, float]:
  """The METRICS of one run; NaN where it logged no such value, and
  rounds_to_target NaN without a ``target``."""
  return {
      'final_test_accuracy': _last(run.rows, 'test_accuracy'),
      'best_test_accuracy': max(
          (r['test_accuracy'] for r in run.rows if 'test_accuracy' in r),
          default=math.nan),
      'final_test_loss': _last(run.rows, 'test_loss'),
      'final_train_loss': _last(run.rows, 'train_loss'),
      'final_global_train_loss': _last(run.rows, 'global_train_loss'),
      'final_global_train_accuracy': _last(run.rows,
                                           'global_train_accuracy'),
      'rounds_to_target': (math.nan if target is None
                           else rounds_to_target(run.rows, target)),
  }


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample std (ddof=1) over axis 0; std is NaN for one row
  and for a column holding inf."""
  if len(values) < 2:
    return values.mean(0), np.full(values.shape[1:], np.nan)
  with np.errstate(invalid='ignore'):  # inf - inf in the std
    return values.mean(0), values.std(0, ddof=1)


def _label(overrides: dict[str, Any], fields: Sequence[str]) -> str:
  return ', '.join(f'{k}={overrides[k]}' for k in fields
                   if k in overrides) or '(base)'


def _label_key(label: str) -> tuple:
  """Sorts labels with their numbers compared as numbers (0.5 before 10)."""
  parts = re.split(r'(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)', label)
  return tuple(float(p) if i % 2 else p for i, p in enumerate(parts))


def _swept_with(runs: list[Run], tasks: Sequence[str], fields: list[str],
                seed_field: str) -> list[str]:
  """Fields that vary across tasks but are constant within each one (e.g.
  ``data.beta`` swept together with the task field ``data.alpha``): they
  belong to the task, not to the method."""
  if not tasks:
    return []
  swept_with = []
  for field in fields:
    if field in tasks or field == seed_field:
      continue
    values: dict[str, set[str]] = {}
    for run in runs:
      values.setdefault(_label(run.overrides, tasks), set()).add(
          json.dumps(run.overrides.get(field)))
    if (all(len(v) == 1 for v in values.values())
        and len(set().union(*values.values())) > 1):
      swept_with.append(field)
  return swept_with


def group_runs(runs: list[Run], tasks: Sequence[str] = (),
               seed_field: str | None = None,
               target: float | None = None) -> list[Group]:
  """Groups ``runs`` by (method, task), ordered by task, then method.

  ``seed_field=None`` averages over 'seed' when some run overrides it. Fields
  swept together with the task fields join them. ``target`` is the test
  accuracy that rounds_to_target counts to (a mean of inf: some seed never
  got there).
  """
  fields = sorted({k for run in runs for k in run.overrides})
  if seed_field is None:
    seed_field = DEFAULT_SEED_FIELD if DEFAULT_SEED_FIELD in fields else ''
  named = [('task', f) for f in tasks]
  named += [('seed', seed_field)] if seed_field else []
  for kind, field in named:
    if field not in fields:
      raise ConfigError(f'{kind} field {field!r} is overridden by no run; '
                        f'overridden fields: {", ".join(fields)}')
  if seed_field in tasks:
    raise ConfigError(f'{seed_field!r} cannot be both the seed field and a '
                      'task field')
  tasks = list(tasks) + _swept_with(runs, tasks, fields, seed_field)
  method_fields = [f for f in fields if f not in tasks and f != seed_field]
  by_label: dict[tuple[str, str], list[Run]] = {}
  for run in runs:
    task = _label(run.overrides, tasks) if tasks else ALL_RUNS
    by_label.setdefault((_label(run.overrides, method_fields), task),
                        []).append(run)
  groups = []
  for (method, task), members in sorted(
      by_label.items(),
      key=lambda item: (_label_key(item[0][1]), _label_key(item[0][0]))):
    values = np.array([list(run_metrics(r, target).values())
                       for r in members])
    mean, std = _mean_std(values)
    groups.append(Group(method, task, members,
                        dict(zip(METRICS, mean.tolist())),
                        dict(zip(METRICS, std.tolist()))))
  return groups


def _cell(text: Any) -> str:
  return str(text).replace('|', r'\|')


def _mean_pm_std(mean: float, std: float, digits: int = 4,
                 inf: str = 'inf') -> str:
  if math.isinf(mean):
    return inf
  if math.isnan(std):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def markdown_table(groups: list[Group]) -> str:
  """One row per group: seeds and mean ± std of every METRICS entry that
  some run logged."""
  metrics = [m for m in METRICS
             if any(not math.isnan(g.mean[m]) for g in groups)]
  header = ['task', 'method', 'seeds', *metrics]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for g in groups:
    cells = [g.task, g.method, len(g.runs),
             *(_mean_pm_std(g.mean[m], g.std[m], *CELL_FORMATS.get(m, ()))
               for m in metrics)]
    lines.append('| ' + ' | '.join(map(_cell, cells)) + ' |')
  return '\n'.join(lines)


def write_table(groups: list[Group], out_dir: str) -> str:
  """Writes summary.md and summary.csv to ``out_dir``; returns the markdown."""
  table = markdown_table(groups)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(out_dir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['task', 'method', 'seeds',
                     *(f'{m}_{s}' for m in METRICS for s in ('mean', 'std'))])
    for g in groups:
      writer.writerow([g.task, g.method, len(g.runs),
                       *(v for m in METRICS for v in (g.mean[m], g.std[m]))])
  return table


def curve(runs: list[Run], key: str
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Rounds where every run logged ``key``; mean and sample std over runs."""
  per_run = [{r['round']: r[key] for r in run.rows if key in r}
             for run in runs]
  rounds = sorted(set.intersection(*(set(values) for values in per_run)))
  values = np.array([[v[x] for x in rounds] for v in per_run], float)
  mean, std = _mean_std(values.reshape(len(runs), len(rounds)))
  return np.array(rounds), mean, std


def plot_curves(groups: list[Group], key: str, path: str,
                target: float | None = None) -> None:
  """Mean ± std of ``key`` against round, one line per method and one
  subplot per task; ``target`` draws a dashed horizontal line."""
  tasks = sorted({g.task for g in groups}, key=_label_key)
  methods = sorted({g.method for g in groups}, key=_label_key)
  colors = matplotlib.colormaps['tab10' if len(methods) <= 10 else 'tab20']
  ncols = math.ceil(math.sqrt(len(tasks)))
  nrows = math.ceil(len(tasks) / ncols)
  fig = Figure(figsize=(4.5 * ncols, 3.5 * nrows + 0.3 * len(methods)),
               layout='constrained')
  axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
  for ax, task in zip(axes, tasks):
    for g in groups:
      if g.task != task:
        continue
      color = colors(methods.index(g.method) % colors.N)
      rounds, mean, std = curve(g.runs, key)
      ax.plot(rounds, mean, color=color, label=g.method,
              marker='o' if len(rounds) == 1 else None)
      ax.fill_between(rounds, mean - std, mean + std, color=color, alpha=0.2)
    if target is not None:
      ax.axhline(target, color='gray', linestyle='--', linewidth=1)
    if task != ALL_RUNS:
      ax.set_title(task, fontsize='medium')
    ax.set_xlabel('round')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  handles = {label: handle for ax in fig.axes
             for handle, label in zip(*ax.get_legend_handles_labels())}
  shown = [m for m in methods if m in handles]
  spare = axes[len(tasks):]  # the grid cells past the last task
  for ax in spare:
    ax.set_axis_off()
  label_inches = 0.08 * max(map(len, shown)) + 0.8
  if spare and label_inches < 4.5:  # the legend fits in an empty cell
    spare[0].legend([handles[m] for m in shown], shown, loc='center',
                    fontsize='small')
  else:  # below the plots, as many columns as the widest label allows
    fits = int(fig.get_figwidth() / label_inches)
    fig.legend([handles[m] for m in shown], shown, loc='outside lower center',
               ncols=max(1, min(len(shown), fits)), fontsize='small')
  fig.suptitle(f'{key}: mean ± std over seeds')
  fig.savefig(path, dpi=120, bbox_inches='tight')  # wide legends


def ranking_scores(groups: list[Group], metric: str
                   ) -> dict[str, dict[str, float]]:
  """Task -> method -> mean ``metric``, rounded to 12 decimals so that float
  noise in the means does not split ties."""
  scores: dict[str, dict[str, float]] = {}
  for g in groups:
    scores.setdefault(g.task, {})[g.method] = round(g.mean[metric], 12)
  return scores


def ranking_markdown(groups: list[Group], metric: str,
                     ranking: str = 'borda') -> str:
  """The ranking of methods across tasks, with each method's rank per task."""
  higher_is_better = METRICS[metric]
  scores = ranking_scores(groups, metric)
  ranks = task_ranks(scores, higher_is_better)
  rule = RANKINGS[ranking]
  header = ['rank', 'method', rule.column, *scores]
  lines = [f'Methods ranked by {ranking} on {metric} '
           f'({"higher" if higher_is_better else "lower"} is better) over '
           f'{len(scores)} task(s); per task, 1 = best and ties share the '
           f'mean rank; {rule.convention}.',
           '', '| ' + ' | '.join(map(_cell, header)) + ' |',
           '|' + '---|' * len(header)]
  for position, (method, points) in enumerate(
      rule.rank(scores, higher_is_better), 1):
    per_task = [f'{ranks[t][method]:g}' if method in ranks[t] else '-'
                for t in scores]
    lines.append('| ' + ' | '.join(
        map(_cell, [position, method, f'{points:g}', *per_task])) + ' |')
  return '\n'.join(lines)


class Pivot(NamedTuple):
  """A metric laid out as rows x columns of override values."""
  row_field: str
  column_fields: tuple[str, ...]
  rows: list[str]
  columns: list[str]
  mean: np.ndarray   # [rows, columns], NaN where no run
  count: np.ndarray  # runs averaged per cell


def pivot(runs: list[Run], row_field: str, column_fields: Sequence[str],
          metric: str = 'final_test_accuracy') -> Pivot:
  """``metric`` per (row value, column values), averaged over every other
  override (seeds); e.g. rule x (Byzantine fraction, attack)."""
  fields = {k for run in runs for k in run.overrides}
  for field in (row_field, *column_fields):
    if field not in fields:
      raise ConfigError(f'heatmap field {field!r} is overridden by no run; '
                        f'overridden fields: {", ".join(sorted(fields))}')
  cells: dict[tuple[str, str], list[float]] = {}
  for run in runs:
    key = (_label(run.overrides, [row_field]).split('=', 1)[1],
           ', '.join(_label(run.overrides, [f]).split('=', 1)[1]
                     for f in column_fields))
    cells.setdefault(key, []).append(run_metrics(run)[metric])
  row_labels = list(dict.fromkeys(r for r, _ in cells))
  columns = sorted({c for _, c in cells}, key=_label_key)
  mean = np.full((len(row_labels), len(columns)), np.nan)
  count = np.zeros_like(mean, dtype=int)
  for (r, c), values in cells.items():
    i, j = row_labels.index(r), columns.index(c)
    mean[i, j], count[i, j] = np.mean(values), len(values)
  return Pivot(row_field, tuple(column_fields), row_labels, columns, mean,
               count)


def pivot_markdown(table: Pivot, metric: str) -> str:
  corner = f'{table.row_field} \\ {", ".join(table.column_fields)}'
  lines = [f'{metric}, mean over the runs of each cell '
           f'({int(table.count.max(initial=0))} at most); - = not run.', '',
           '| ' + ' | '.join(map(_cell, [corner, *table.columns])) + ' |',
           '|' + '---|' * (len(table.columns) + 1)]
  for row, values in zip(table.rows, table.mean):
    lines.append('| ' + ' | '.join(map(_cell, [row, *(
        '-' if math.isnan(v) else f'{v:.3f}' for v in values)])) + ' |')
  return '\n'.join(lines)


def plot_heatmap(table: Pivot, metric: str, path: str) -> None:
  """The pivot as a colour grid with its values written in the cells."""
  fig = Figure(figsize=(2.5 + 0.75 * len(table.columns),
                        1.5 + 0.4 * len(table.rows)))
  ax = fig.subplots()
  image = ax.imshow(np.ma.masked_invalid(table.mean), cmap='viridis',
                    aspect='auto', vmin=np.nanmin(table.mean, initial=0),
                    vmax=np.nanmax(table.mean, initial=1))
  ax.set_xticks(range(len(table.columns)), table.columns, rotation=60,
                ha='right', fontsize=8)
  ax.set_yticks(range(len(table.rows)), table.rows, fontsize=8)
  ax.set_xlabel(', '.join(table.column_fields))
  ax.set_ylabel(table.row_field)
  middle = np.nanmean(table.mean) if np.isfinite(table.mean).any() else 0
  for (i, j), value in np.ndenumerate(table.mean):
    if not math.isnan(value):
      ax.text(j, i, f'{value:.2f}', ha='center', va='center', fontsize=7,
              color='black' if value > middle else 'white')
  fig.colorbar(image, ax=ax, label=metric)
  ax.set_title(f'{metric} (mean over seeds)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def report(sweep_dir: str, out_dir: str | None = None,
           tasks: Sequence[str] = (), seed_field: str | None = None,
           metric: str = 'final_test_accuracy',
           ranking: str = 'borda', target: float | None = None,
           heatmap: Sequence[str] = (), curves: Sequence[str] = ()) -> str:
  """Writes summary.md/.csv, ranking.md, report.md and one PNG per CURVES
  key and per extra ``curves`` key (e.g. 'aggregator.gamma', plotted for
  the groups that log it) to ``out_dir`` (default ``sweep_dir/report``);
  returns report.md.

  ``heatmap = (row_field, column_field, ...)`` also writes heatmap.md and
  heatmap.png: ``metric`` per row value and column values. ``target`` (a
  test accuracy) adds rounds_to_target to the table, as a possible
  ``metric``, and as a line on the test_accuracy curves.
  """
  if metric not in METRICS:
    raise ConfigError(f'unknown metric {metric!r}; valid metrics: '
                      f'{", ".join(METRICS)}')
  if ranking not in RANKINGS:
    raise ConfigError(f'unknown ranking {ranking!r}; valid rankings: '
                      f'{", ".join(RANKINGS)}')
  if target is None and metric == 'rounds_to_target':
    raise ConfigError('metric rounds_to_target needs a target test accuracy '
                      '(--target, e.g. 0.8)')
  if target is not None and not 0 < target <= 1:
    raise ConfigError(f'target must be a test accuracy in (0, 1], got '
                      f'{target}')
  runs, failed = load_runs(sweep_dir), failed_runs(sweep_dir)
  if not runs:
    raise ConfigError(
        f'no runs in {sweep_dir}: expected sub-directories holding '
        f'overrides.json and metrics.jsonl ({len(failed)} failed)')
  groups = group_runs(runs, tasks, seed_field, target)
  out_dir = out_dir or os.path.join(sweep_dir, 'report')
  table = write_table(groups, out_dir)
  ranked = ranking_markdown(groups, metric, ranking)
  with open(os.path.join(out_dir, 'ranking.md'), 'w') as f:
    f.write(ranked + '\n')
  for key in CURVES + tuple(curves):
    logged = [g for g in groups
              if all(any(key in row for row in run.rows) for run in g.runs)]
    if not logged:
      raise ConfigError(f'curve {key!r}: no run logged it; keys in '
                        f'metrics.jsonl: {", ".join(sorted(runs[0].rows[0]))}')
    plot_curves(logged, key, os.path.join(out_dir, f'{key}.png'),
                target if key == 'test_accuracy' else None)
  sections = [
      f'# Sweep {sweep_dir}: {len(runs)} runs in {len(groups)} groups',
      '## Results\n\nMean ± sample std (ddof=1) over seeds; one seed shows '
      f'the mean only.\n\n{table}',
      f'## Ranking\n\n{ranked}',
  ]
  if heatmap:
    if len(heatmap) < 2:
      raise ConfigError('heatmap needs a row field and at least one column '
                        f'field, got {list(heatmap)}')
    grid = pivot(runs, heatmap[0], heatmap[1:], metric)
    grid_md = pivot_markdown(grid, metric)
    with open(os.path.join(out_dir, 'heatmap.md'), 'w') as f:
      f.write(grid_md + '\n')
    plot_heatmap(grid, metric, os.path.join(out_dir, 'heatmap.png'))
    sections.insert(1, f'## Heatmap\n\n{grid_md}\n\n![heatmap](heatmap.png)')
  if failed:
    sections.append('## Failed runs\n\n' + '\n'.join(
        f'- {name}: {message}' for name, message in failed.items()))
  text = '\n\n'.join(sections) + '\n'
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write(text)
  return text
