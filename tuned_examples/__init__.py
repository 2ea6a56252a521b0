"""Tuned examples (<algo>/<env>.yaml), shipped as package data so the command line finds them from any directory."""

import os

ROOT = os.path.dirname(os.path.abspath(__file__))
"""The folder holding the tuned examples."""
