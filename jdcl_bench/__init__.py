"""jdcl-bench: continual learning with generative replay, JDCL and its baselines on registered protocols."""
from importlib.metadata import PackageNotFoundError, version as _version

# The version lives in pyproject.toml only; records and `jdcl-bench --version` read it from here.
try:
    __version__ = _version("jdcl-bench")
except PackageNotFoundError:  # the source tree on sys.path without an install
    __version__ = "0+unknown"
