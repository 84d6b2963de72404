"""attention_zoo: attention variants with the signature of `jax.nn.dot_product_attention`.

    import attention_zoo
    attend = attention_zoo.get("chunked", query_chunk_size=256)
    out = attend(query, key, value, is_causal=True)   # [B, T, N, H]
"""

from attention_zoo.registry import Attention, get, names, options

__all__ = ["Attention", "get", "names", "options"]
