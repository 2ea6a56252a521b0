"""Env runners: the gymnasium runner, the multi-agent and external-simulator runners, the
runner factory of each env kind (``env_runner.RUNNER_FACTORIES``), and the group that
drives a fleet of them."""
