"""Names -> factories. Components are chosen in configs by a *spec*: a registry
name with optional keyword arguments, e.g. ``'mlp(hidden=(200, 200))'``.

Every failure names the config field, what was wrong and the valid choices.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import math
import pkgutil
from typing import Any, Callable


class ConfigError(ValueError):
  """A configuration that cannot work; raised before any training starts."""


def non_finite(value) -> bool:
  """Whether ``value`` is, or a tuple / list / dict holds, an inf or NaN."""
  if isinstance(value, float):
    return not math.isfinite(value)
  if isinstance(value, (tuple, list)):
    return any(non_finite(v) for v in value)
  if isinstance(value, dict):
    return any(non_finite(v) for v in value.values())
  return False


def parse_spec(spec: str, field: str) -> tuple[str, dict[str, Any]]:
  """``'name(a=1, b=(2, 3))'`` -> ``('name', {'a': 1, 'b': (2, 3)})``."""
  if not isinstance(spec, str) or not spec.strip():
    raise ConfigError(f'{field}: expected a spec string like "name" or '
                      f'"name(key=value)", got {spec!r}')
  try:
    node = ast.parse(spec.strip(), mode='eval').body
  except SyntaxError as e:
    raise ConfigError(f'{field}: cannot parse spec {spec!r}: {e.msg}') from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
      and not node.args):
    kwargs = {}
    for kw in node.keywords:
      try:
        kwargs[kw.arg] = ast.literal_eval(kw.value)
      except ValueError:
        raise ConfigError(
            f'{field}: value of {kw.arg!r} in {spec!r} must be a literal '
            '(number, string, tuple, ...)') from None
      if non_finite(kwargs[kw.arg]):
        raise ConfigError(f'{field}: {kw.arg!r} in {spec!r} must be finite, '
                          f'got {kwargs[kw.arg]!r}')
    return node.func.id, kwargs
  raise ConfigError(f'{field}: spec {spec!r} must look like "name" or '
                    '"name(key=value, ...)" with keyword arguments only')


def import_modules(package: str, path) -> None:
  """Imports every module of ``package`` (its ``__name__`` and
  ``__path__``), binding each as a name of the package, so that its
  registry lists a part in one line, ``REGISTRY.register(name)(module.f)``,
  and a new part is a new module plus that line."""
  for module in pkgutil.iter_modules(path):
    importlib.import_module(f'{package}.{module.name}')


class Registry:
  """A named set of factories, e.g. all aggregation rules."""

  def __init__(self, kind: str):
    self.kind = kind
    self._factories: dict[str, Callable[..., Any]] = {}

  def register(self, name: str):
    """``REGISTRY.register(name)(factory)``: one line per part, listed in
    the registry's module after the parts are defined."""
    def decorator(factory):
      if name in self._factories:
        raise ValueError(f'{self.kind} {name!r} registered twice')
      self._factories[name] = factory
      return factory
    return decorator

  def names(self) -> list[str]:
    return sorted(self._factories)

  def __contains__(self, name: str) -> bool:
    return name in self._factories

  def get(self, name: str, field: str) -> Callable[..., Any]:
    if name not in self._factories:
      raise ConfigError(f'{field}: unknown {self.kind} {name!r}; valid '
                        f'{self.kind}s: {", ".join(self.names())}')
    return self._factories[name]

  def build(self, spec: str, field: str, /, **context):
    """Parses ``spec`` and calls its factory with its kwargs plus ``context``.

    ``context`` holds arguments fedround supplies itself (e.g. num_classes);
    a factory receives those of them that it accepts.
    """
    name, kwargs = parse_spec(spec, field)
    return self.call(name, kwargs, field, **context)

  def check(self, name: str, kwargs: dict[str, Any], field: str, /,
            *context: str) -> Callable[..., Any]:
    """Fails unless ``name`` is registered and takes every one of ``kwargs``
    (``context``: the names fedround supplies itself); returns the factory."""
    factory = self.get(name, field)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    user_args = [p for p in params if p not in context]
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
      raise ConfigError(
          f'{field}: {self.kind} {name!r} has no parameter '
          f'{", ".join(map(repr, unknown))}; valid parameters: '
          f'{", ".join(user_args) or "(none)"}')
    return factory

  def call(self, name: str, kwargs: dict[str, Any], field: str, /, **context):
    factory = self.check(name, kwargs, field, *context)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    supplied = {k: v for k, v in context.items() if k in params or takes_any}
    try:
      return factory(**supplied, **kwargs)
    except ConfigError:
      raise
    except TypeError as e:
      raise ConfigError(f'{field}: cannot build {self.kind} {name!r} from '
                        f'{kwargs}: {e}') from None
    except ValueError as e:  # a factory refusing its parameters
      raise ConfigError(f'{field}: {self.kind} {name!r}: {e}') from None
