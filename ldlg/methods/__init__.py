"""Methods: ways of modelling text (see base.py). Importing this package registers every method."""

from ldlg.methods.base import METHODS, Method

# Registration: each import adds its method to METHODS.
from ldlg.methods.gaussian import method as _gaussian  # noqa: F401,E402


def method_name(config) -> str:
  """The run's method name (configs without a `method` field are Gaussian latent diffusion runs)."""
  return config.get("method", "gaussian")


def get(config):
  """The method class of a config."""
  return METHODS.get(method_name(config))


def stages(config) -> tuple:
  """The ordered stages of a config's method."""
  return get(config).stages()


__all__ = ["METHODS", "Method", "get", "method_name", "stages"]
