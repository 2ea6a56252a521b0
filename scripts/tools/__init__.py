"""What only the scripts use, around training: tuned examples and the run loop
(``experiment``), regression runs, hyperparameter search on Ray Tune, serving on Ray Serve.
They build on ``rlfleet.rl`` and ``rlfleet.runtime``; nothing in ``rl/`` imports them."""
