"""The package's version and the version of what its algorithms compute.

A leaf: it imports nothing, so that the results store, the training loop and the book runner can
stamp records without importing the package root. Both names are re-exported by :mod:`adamqlr`.
"""

__all__ = ["ALGORITHM_VERSION", "__version__"]

__version__ = "0.1.0"

#: Bumped whenever what a step computes changes (a formula, a default, a rule), so that stored run
#: records made by an older algorithm are reported as stale instead of being silently reused. A
#: change of floating-point evaluation order alone does not bump it; every record also stores the
#: exact commit that made it.
ALGORITHM_VERSION = 1
