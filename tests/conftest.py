"""Shared pytest set-up.

Two host CPU devices are forced before JAX is imported anywhere, so pmap tests can compare a
2-device step with a 1-device step. Single-device code is unaffected: it runs on device 0.
"""
import os
import pathlib
import shutil

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# JAX's persistent compilation cache, shared by this run's tests and the CLI subprocesses they start (which inherit
# the environment): the tiny pipeline compiles the same programs in every fault-injection run, and a warm cache
# halves its wall time. Executables come back bit-identical, so results do not change. Kept between local runs
# (the key holds the JAX/XLA version and flags); set JAX_COMPILATION_CACHE_DIR yourself to move it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The raw-data folder (`<dataset>/...`), from LDLG_DATA_DIR or ../shared/data beside the repo."""
  path = pathlib.Path(os.environ.get("LDLG_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.fail(f"raw data not found at {path}; set LDLG_DATA_DIR to the folder holding e2e/, sst/, ...")
  return path


@pytest.fixture(scope="session")
def e2e_valid_sentences(data_dir) -> list[str]:
  """E2E validation references: the text right of `||` in each line of `e2e/src1_valid.txt`, stripped."""
  with open(data_dir / "e2e" / "src1_valid.txt", encoding="utf-8") as f:
    return [line.split("||", 1)[1].strip() for line in f if "||" in line]


# ------------------------------------------------------------------------------------------- test tiers
# `slow`: end-to-end checks (CLI pipelines, fault injection) that CI runs. `extended`: heavier checks of a guarantee
# that a cheaper CI test already covers in its basic form (every denoiser option under pmap, each trainer's own
# resume, paper-style reconstruction); skipped unless `--extended` or LDLG_EXTENDED_TESTS=1, so the CI suite stays
# within its time budget. Run them before a release or after touching the code they name.

def pytest_addoption(parser):
  parser.addoption("--extended", action="store_true", default=False,
                   help="also run the tests marked `extended` (see tests/conftest.py)")


# The longest files first, so that under `--dist loadfile` neither worker is left with one of them at the end;
# the fault-injection file builds `tiny_cli_run`, which the files that only read it (last) then find ready.
FIRST = ("test_fault_injection", "test_train", "test_speed_benchmarks", "test_method_pipelines")
LAST = ("test_pipeline", "test_diagnostics", "test_length_grouped_batches", "test_compressed_codec")


def _file_rank(item) -> int:
  name = item.path.stem
  return FIRST.index(name) - len(FIRST) if name in FIRST else (1 + LAST.index(name) if name in LAST else 0)


def pytest_collection_modifyitems(config, items):
  items.sort(key=_file_rank)  # Stable: the order inside a file, and of the other files, is kept.
  if config.getoption("--extended") or os.environ.get("LDLG_EXTENDED_TESTS") == "1":
    return
  skip = pytest.mark.skip(reason="extended check: run with --extended (or LDLG_EXTENDED_TESTS=1)")
  for item in items:
    if "extended" in item.keywords:
      item.add_marker(skip)


# ------------------------------------------------------------------------------------------- shared runs

@pytest.fixture(scope="session")
def tiny_cli_run(tmp_path_factory, data_dir) -> pathlib.Path:
  """The workdir of one uninterrupted `python -m ldlg.main --config=configs/tiny.py --mode=pipeline` run.

  Shared read-only by the end-to-end, fault-injection, notebook and diagnostics tests (copy it before writing).
  Built once per test run: under pytest-xdist the workers share it through a folder named by the run's id, and a
  file lock makes the second worker wait for the first one's run instead of repeating it.
  """
  import filelock  # pylint: disable=import-outside-toplevel
  from tests.helpers import subprocesses  # pylint: disable=import-outside-toplevel  (after the env set-up above)
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if run_id:  # Each worker's basetemp is <shared>/popen-gwN.
    root = tmp_path_factory.getbasetemp().parent / f"tiny_cli_run-{run_id}"
    root.mkdir(exist_ok=True)
  else:
    root = tmp_path_factory.mktemp("tiny_cli_run")
  wd, done = root / "wd", root / "done"
  with filelock.FileLock(str(root / "lock")):
    if not done.exists():
      shutil.rmtree(wd, ignore_errors=True)  # A failed attempt's leftovers.
      result = subprocesses.run_cli(subprocesses.cli_command(wd, f"--data_dir={data_dir}"), timeout=900)
      assert result.returncode == 0, result.stderr[-3000:]
      done.touch()
  return wd


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
  """(a randomly initialised tiny BART (width 16, one layer each side, no dropout) with a tokenizer trained on a
  synthetic corpus, that corpus): for the plumbing of what trains through a frozen BART (the compression network,
  the decoder fine-tune), not for reconstruction quality."""
  import itertools  # pylint: disable=import-outside-toplevel
  from ldlg.codecs.bart import pretrain  # pylint: disable=import-outside-toplevel
  from ldlg.codecs.bart import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from ldlg.codecs.bart.autoencoder import Autoencoder  # pylint: disable=import-outside-toplevel
  adj, noun, verb = "red blue small old".split(), "cat dog bird fish".split(), "sees likes eats".split()
  texts = [f"the {a} {n} {v} the {m}" for a, n, v, m in itertools.product(adj, noun, verb, noun)][:160]
  tok = tokenizer_lib.train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok"), min_frequency=1)
  cfg = pretrain.default_autoencoder_config()
  cfg.update(max_length=16, d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=32,
             dropout=0.0, max_position_embeddings=32)
  return Autoencoder.from_config(pretrain.bart_config(cfg, len(tok)), tok, max_length=16), texts
