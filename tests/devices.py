"""Run code in a fresh Python process that sees `n` CPU devices (XLA's host-platform flag
must be set before JAX starts, so it cannot be set inside the test process)."""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(n: int, code: str, timeout: int = 600):
  """Runs `code` with n devices; returns the JSON it prints on its last line."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu")
  prelude = f"import sys; sys.path.insert(0, {REPO!r})\n"
  done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])
