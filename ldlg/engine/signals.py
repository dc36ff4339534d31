"""Stop signals: SIGTERM (preemption, `kill`) and SIGINT become a flag that a long loop checks, so it saves
its work before it stops; the job then ends with `Interrupted`, which the CLI turns into a non-zero exit."""

import signal

from absl import logging

EXIT_CODE_INTERRUPTED = 143  # 128 + SIGTERM, what a shell reports for a job ended by SIGTERM.


class Interrupted(RuntimeError):
  """A stage stopped early on a stop signal, after saving what it had; re-running the command resumes."""


class StopSignal:
  """Context manager: while active, SIGTERM (and SIGINT with `interrupt=True`) set `received` instead of
  killing the process. A second SIGINT falls through to Python's KeyboardInterrupt."""

  def __init__(self, *, interrupt: bool = True):
    self.received = False
    self.signal_name = None
    self._interrupt = interrupt
    self._previous = {}

  def __enter__(self):
    signals = [signal.SIGTERM] + ([signal.SIGINT] if self._interrupt else [])
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals cannot be caught here.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning("%s received: saving at the end of this step, then stopping.", name)
    self.received = True
    self.signal_name = name

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


class RaiseOnSignal:
  """Context manager for stages whose on-disk units are written atomically (latent shards, metrics.json): a
  stop signal raises `Interrupted` at once; the units already written are kept and skipped on the rerun."""

  def __init__(self, what: str):
    self.what = what
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM,):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    raise Interrupted(f"{self.what} was interrupted by {signal.Signals(signum).name}")

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
