"""Shared pytest set-up.

Two host CPU devices are forced before JAX is imported anywhere, so pmap tests can compare a
2-device step with a 1-device step. Single-device code is unaffected: it runs on device 0.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The raw-data folder (`<dataset>/...`), from LDLG_DATA_DIR or ../shared/data beside the repo."""
  path = pathlib.Path(os.environ.get("LDLG_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.fail(f"raw data not found at {path}; set LDLG_DATA_DIR to the folder holding e2e/, sst/, ...")
  return path
