"""Packages are found, not listed: a new folder with an ``__init__.py`` under ``algorithms/``
(or any other top-level folder below) ships with no edit to the packaging. Everything else
about the project is in pyproject.toml; setuptools calls this for the package list only,
because its ``packages.find`` cannot add the ``rlfleet.`` prefix the folders install under.

Benchmarks (``scripts/bench*.py``) and the peer libraries' scripts (``scripts/peers/``, no
``__init__.py``) are run from a checkout and are not installed."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOTS = ("rl", "algorithms", "envs", "runtime", "scripts", "tuned_examples")


class WithoutBenchmarks(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "rlfleet.scripts" and m[1].startswith("bench"))]


setup(packages=[f"rlfleet.{name}" for name in find_packages(include=[f"{root}*" for root in ROOTS])
                if name.split(".")[0] in ROOTS],
      cmdclass={"build_py": WithoutBenchmarks})
