"""The library installs alone: the wheel holds every attention_zoo module and nothing else, and
installed in a fresh environment that has only JAX it runs from another directory without the
experiment stack (flax, optax, orbax, TFDS, grain, matplotlib, ...).

The fresh environment is a venv without system site-packages; the wheel is installed into it by
pip, and JAX's installed distributions (the closure of the wheel's own Requires-Dist) are linked
in through one folder named by a .pth file, so nothing is downloaded.
"""

import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT_STACK = ("flax", "optax", "orbax", "tensorflow_datasets", "grain", "matplotlib",
                    "ml_collections", "absl", "tensorboardX", "tqdm", "tensorflow", "torch")
NEEDS_FLAX = {"layer", "gates"}  # the Flax layer: `pip install attention-zoo[flax]`


def _norm(name):
  return re.sub(r"[-_.]+", "-", name).lower()


def _pinned():
  names = set()
  for line in (REPO / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line and not line.startswith("-"):
      names.add(_norm(Requirement(line).name))
  return names


def _library_modules():
  root = REPO / "attention_zoo"
  return sorted(str(p.relative_to(REPO)) for p in root.rglob("*.py")
                if "__pycache__" not in p.parts)


def _build_wheel(tmp_path):
  """Builds from a copy of the project files, so no build/ or egg-info lands in the checkout."""
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(REPO / "attention_zoo", src / "attention_zoo",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                  "--no-build-isolation", "--no-index", "-q", "-w", str(dist)],
                 check=True, capture_output=True, text=True)
  (wheel,) = dist.glob("attention_zoo-*.whl")
  return wheel


def _closure(requirements):
  """The installed distributions that `requirements` (Requires-Dist lines) pull in, no extras."""
  seen, todo = {}, list(requirements)
  while todo:
    req = Requirement(todo.pop())
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
      continue
    if _norm(req.name) in seen:
      continue
    dist = importlib.metadata.distribution(req.name)
    seen[_norm(req.name)] = dist
    todo.extend(dist.requires or [])
  return seen


def _link_distributions(dists, folder):
  """Links each distribution's top-level files (packages, bundled .libs, dist-info) into
  `folder`: a site directory holding these distributions and nothing else."""
  folder.mkdir()
  for dist in dists.values():
    tops = {pathlib.PurePath(f).parts[0] for f in dist.files or ()}
    for top in sorted(t for t in tops if t not in ("..", "__pycache__")):
      target = pathlib.Path(dist.locate_file(top))
      if target.exists() and not (folder / top).exists():
        (folder / top).symlink_to(target)


def test_wheel_installs_alone_with_jax_only(tmp_path):
  wheel = _build_wheel(tmp_path)
  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  # Every library module, and no other top-level package (tests, experiments, configs).
  assert sorted(n for n in names if n.endswith(".py")) == _library_modules()
  assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"attention_zoo"}
  assert "attention_zoo/kernels/flash_cpu.cc" in names  # implementation="cpu" builds it
  requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
              if line.startswith("Requires-Dist:")]
  core = [r for r in requires if "extra ==" not in r]
  assert sorted(_norm(Requirement(r).name) for r in core) == ["jax", "jaxlib", "numpy"]
  # Every declared dependency, core or extra, has its pin in requirements.txt.
  assert {_norm(Requirement(r).name) for r in requires} <= _pinned()

  jax_only = _closure(core)
  assert not set(jax_only) & {_norm(m) for m in EXPERIMENT_STACK}, sorted(jax_only)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                  "--no-index", "-q", str(wheel)], check=True, capture_output=True, text=True)
  site = pathlib.Path(subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip())
  _link_distributions(jax_only, tmp_path / "jax_only")
  (site / "jax_only.pth").write_text(str(tmp_path / "jax_only") + "\n")

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  code = textwrap.dedent(f"""
      import importlib, importlib.util, pkgutil, sys
      import numpy as np
      import jax
      import attention_zoo
      assert attention_zoo.__file__.startswith({str(site)!r}), attention_zoo.__file__
      stack = {EXPERIMENT_STACK!r}
      assert not [m for m in stack if importlib.util.find_spec(m)], "experiment stack visible"
      for module in pkgutil.iter_modules(attention_zoo.__path__):
        try:
          importlib.import_module("attention_zoo." + module.name)
        except ModuleNotFoundError as e:
          assert module.name in {NEEDS_FLAX!r} and e.name == "flax", (module.name, e)
        else:
          assert module.name not in {NEEDS_FLAX!r}, module.name
      q, k, v = (jax.random.normal(jax.random.key(i), (2, 13, 4, 8)) for i in range(3))
      out = attention_zoo.get("chunked", query_chunk_size=4, key_chunk_size=4)(
          q, k, v, is_causal=True)
      ref = attention_zoo.get("softmax")(q, k, v, is_causal=True)
      np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
      print("ok", sorted(m for m in sys.modules if m.split(".")[0] in stack))
      """)
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  result = subprocess.run([python, "-c", code], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "ok []"
