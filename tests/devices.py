"""Run code in a fresh Python process that sees `n` CPU devices (XLA's host-platform flag
must be set before JAX starts, so it cannot be set inside the test process)."""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(n: int, code: str, **env) -> subprocess.Popen:
  """Starts `code` with n devices and `env` added to the environment."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu", **env)
  prelude = f"import sys; sys.path.insert(0, {REPO!r})\n"
  return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen, timeout: int = 600):
  """Waits for a process from `start`; returns the JSON it printed on its last line."""
  out, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, err[-4000:]
  return json.loads(out.strip().splitlines()[-1])


def run(n: int, code: str, timeout: int = 600):
  """Runs `code` with n devices; returns the JSON it prints on its last line."""
  return result(start(n, code), timeout)
