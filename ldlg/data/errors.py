"""The one exception type for bad input data: `DataError`, whose message names the file, the row and the fix.

Every problem a user can fix by editing or placing data files (a missing file, an empty split file, a
malformed row or label) is raised as a `DataError`, so a command-line entry point can catch this one type
and print its message as a single line, without a traceback:

    try:
      records = load_split("sst", "train", data_dir)
    except DataError as e:
      sys.exit(f"data error: {e}")

It subclasses `ValueError`, so code that already catches `ValueError` keeps working.
"""


class DataError(ValueError):
  """Bad or missing input data; the message says which file, which line or row, and what to do."""

