"""The networks: module specs (plain data, shipped to runners), the torch modules built
from them, action distributions, the numpy acting path, and the critics replay-based
actor-critics share. Importing this package loads no torch (``spec`` and
``numpy_policy`` are what a runner of the default policy imports)."""
