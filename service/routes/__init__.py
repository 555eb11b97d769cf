"""HTTP routes, one module per API: native detection, models, DeepStack, KServe v2, operations."""
