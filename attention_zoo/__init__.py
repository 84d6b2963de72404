"""attention_zoo: attention variants with the signature of `jax.nn.dot_product_attention`.

    import attention_zoo
    attend = attention_zoo.get("chunked")
    out = attend(query, key, value, is_causal=True)   # [B, T, N, H]
"""

import importlib as _importlib
import os as _os

from attention_zoo.registry import Attention, Variant, explain, get, names, options, register

__all__ = ["Attention", "Variant", "explain", "get", "names", "options", "register"]

# Variants of other packages, registered by importing them: `ATTENTION_ZOO_PLUGINS=pkg.mod`
# (comma-separated) makes launch.py and the shared tests see them (docs/add_a_variant.md).
for _module in filter(None, _os.environ.get("ATTENTION_ZOO_PLUGINS", "").split(",")):
  _importlib.import_module(_module.strip())
