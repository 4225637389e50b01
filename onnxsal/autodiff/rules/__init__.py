"""Default gradient rules, one small function per operator, grouped by family.

Importing this package registers them all in `registry.DEFAULT_RULES`.
"""

from . import activations, conv, elementwise, indexing, linalg, norm, pooling, reduce, resize, shape  # noqa: F401
