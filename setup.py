"""Packages are found, not listed: a new folder with an ``__init__.py`` under ``algorithms/``
(or any other top-level folder below) ships with no edit to the packaging. Everything else
about the project is in pyproject.toml; setuptools calls this for the package list only,
because its ``packages.find`` cannot add the ``rlfleet.`` prefix the folders install under."""

from setuptools import find_packages, setup

ROOTS = ("rl", "algorithms", "envs", "runtime", "scripts", "tuned_examples")

setup(packages=[f"rlfleet.{name}" for name in find_packages(include=[f"{root}*" for root in ROOTS])
                if name.split(".")[0] in ROOTS])
