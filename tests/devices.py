"""Run code in a fresh Python process that sees `n` CPU devices (XLA's host-platform flag
must be set before JAX starts, so it cannot be set inside the test process)."""

import subprocess

from experiments import children


def start(n: int, code: str, **env) -> subprocess.Popen:
  """Starts `code` with n CPU devices and `env` added to the environment."""
  return children.start(code, devices=n, env=dict(JAX_PLATFORMS="cpu", **env))


def result(process: subprocess.Popen, timeout: int = 600):
  """Waits for a process from `start`; returns the JSON it printed on its last line."""
  done = children.wait(process, timeout)
  assert done.returncode == 0, done.stderr[-4000:]
  return done.last_json()


def run(n: int, code: str, timeout: int = 600):
  """Runs `code` with n CPU devices; returns the JSON it prints on its last line."""
  return result(start(n, code), timeout)
