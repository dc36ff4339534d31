"""Methods: ways of modelling text (see base.py), each registered in `METHODS` when its module is imported.

`MODULES` names the module that registers each method, so a run imports only the method it uses (the AR
baseline pulls in transformers' GPT-2; LD4LG does not need it). Adding a method: a package under ldlg/methods/
whose `method.py` registers a `Method` subclass, and one line here.
"""

import importlib

from ldlg.methods.base import METHODS, Method

MODULES = {
    "gaussian": "ldlg.methods.gaussian.method",
    "autoregressive": "ldlg.methods.autoregressive.method",
    "diffuseq": "ldlg.methods.seq2seq.method",
    "masked": "ldlg.methods.masked.method",
    "bart_seq2seq": "ldlg.methods.bart_seq2seq.method",
    "ld4lg_seq2seq": "ldlg.methods.gaussian.seq2seq_method",
}


def method_name(config) -> str:
  """The run's method name: `config.method` (a name, or a section with a `name` field); configs without one
  are Gaussian latent diffusion runs."""
  method = config.get("method", "gaussian")
  return method if isinstance(method, str) else method.name


def get(config_or_name):
  """The method class of a config (or of a method name)."""
  name = config_or_name if isinstance(config_or_name, str) else method_name(config_or_name)
  if name not in MODULES:
    raise ValueError(f"unknown method {name!r}; choose one of {sorted(MODULES)} (config.method)")
  importlib.import_module(MODULES[name])
  return METHODS.get(name)


def stages(config) -> tuple:
  """The ordered stages of a config's method."""
  return get(config).stages()


__all__ = ["METHODS", "MODULES", "Method", "get", "method_name", "stages"]
