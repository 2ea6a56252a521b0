"""The framework: spaces, modules, batches, env runners, learners, the driver loop."""
