"""Command-line entry points (installed as rlfleet.scripts; nothing imports it)."""
