"""The how-to pages in docs/ work as written: their files and commands, run as a user would."""

import importlib
import json
import os
import re

import pytest

from experiments import children

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(page: str) -> dict[str, str]:
  """The page's code blocks that start with a `# path` line: {path: text}."""
  text = open(os.path.join(REPO, "docs", page)).read()
  blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", text, flags=re.S)
  return {path: body for path, body in blocks}


@pytest.mark.slow
def test_add_a_variant_page(tmp_path):
  """A toy variant from a package outside the checkout joins the contract and property
  suites by registration, as docs/add_a_variant.md says (step 3's command)."""
  files = _files("add_a_variant.md")
  assert "my_attention/scaled.py" in files
  for path, body in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(body)
  env = dict(PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]),
             ATTENTION_ZOO_PLUGINS="my_attention.scaled")
  # -n 0: in one process, not a worker per core (the suite runs beside it on those cores;
  # two more workers would each start JAX and collect both modules again: a third more CPU).
  result = children.run(argv=["-m", "pytest", "tests/test_contract.py",
                              "tests/test_properties.py", "-q", "-k", "scaled_softmax",
                              "-p", "no:cacheprovider", "-m", "not fuzz", "-n", "0"],
                        env=env, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
  assert passed >= 20 and "failed" not in result.stdout, result.stdout[-2000:]


def test_api_reference_has_a_page_per_public_module(tmp_path):
  """docs/api.py renders every public module of the library with its docstrings."""
  result = children.run(argv=["docs/api.py", str(tmp_path)], timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ("registry", "chunked", "linear", "gla", "layer", "decoding", "validation"):
    page = (tmp_path / "attention_zoo" / f"{name}.html").read_text()
    first_words = importlib.import_module(f"attention_zoo.{name}").__doc__.split()[:2]
    assert " ".join(first_words) in page, name
  assert "chunked_attention" in (tmp_path / "attention_zoo" / "chunked.html").read_text()


@pytest.mark.slow
def test_add_a_task_page(tmp_path):
  """A toy task from a package outside the checkout trains for two steps through
  launch.py with the page's config, as docs/add_a_task.md says (step 3)."""
  files = _files("add_a_task.md")
  assert {"my_tasks/increment.py", "my_tasks/increment_config.py"} <= set(files)
  for path, body in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(body)
  small = {"data.data_dir": str(tmp_path / "data"), "data.num_train": 64,
           "data.num_eval": 8, "data.batch_size": 8, "data.eval_batch_size": 8,
           "model.d_model": 16, "model.num_heads": 2, "model.d_ff": 32,
           "model.num_encoder_layers": 1, "model.num_decoder_layers": 1,
           "num_train_steps": 2, "log_every": 1, "eval_every": 2, "checkpoint_every": 2,
           "eval_batches": 1}
  result = children.run(argv=["launch.py", "--config",
                              str(tmp_path / "my_tasks" / "increment_config.py"),
                              "--workdir", str(tmp_path / "run"),
                              *(f"--config.{k}={v}" for k, v in small.items())],
                        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])},
                        timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
  assert "test_exact_accuracy" in final and "test_long_exact_accuracy" in final
