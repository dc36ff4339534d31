"""The benchmarks' one way to get matplotlib: a headless pyplot, or None (with a warning) when it is not installed."""

from absl import logging


def pyplot():
  """`matplotlib.pyplot` on the Agg backend, or None when matplotlib is missing (`pip install .[plots]`)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    logging.warning("matplotlib is not installed (pip install .[plots]): no plots, JSON only.")
    return None
  return plt
