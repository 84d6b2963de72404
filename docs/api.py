"""Writes the API reference of the library: one HTML page per public module, from the
docstrings, with pdoc (https://pdoc.dev).

    python docs/api.py              # -> docs/api/index.html (not committed: always current)
    python docs/api.py /tmp/api
"""

import pathlib
import pkgutil
import sys

import pdoc

import attention_zoo


def modules() -> list[str]:
  """attention_zoo and each of its modules whose name has no leading underscore."""
  return ["attention_zoo"] + [f"attention_zoo.{m.name}"
                              for m in pkgutil.iter_modules(attention_zoo.__path__)
                              if not m.name.startswith("_")]


def main(out: str = "docs/api") -> None:
  pdoc.render.configure(docformat="markdown", footer_text="attention-zoo")
  pdoc.pdoc(*modules(), output_directory=pathlib.Path(out))
  print(f"API reference: {out}/index.html ({len(modules())} modules)")


if __name__ == "__main__":
  main(*sys.argv[1:])
