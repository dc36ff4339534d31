"""Registries of plug-ins (codecs, methods, samplers): a name in a config selects a class or function."""

from typing import Any, Callable


class Registry:
  """Maps names to plug-ins of one kind; `register` is a decorator, `get` fails naming every choice."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def add(obj):
      if name in self._entries and self._entries[name] is not obj:
        raise ValueError(f"a {self.kind} named {name!r} is registered already ({self._entries[name]})")
      self._entries[name] = obj
      return obj
    return add

  def get(self, name: str) -> Any:
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._entries)}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
