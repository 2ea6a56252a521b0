"""The ``rlfleet`` command: ``rlfleet train ...`` runs what ``python scripts/train.py ...``
runs, ``rlfleet regression ...`` what ``python scripts/run_regression.py ...`` runs."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "train a policy (scripts/train.py)",
    "regression": "run tuned examples (scripts/run_regression.py)",
    "serve": "serve a checkpoint over HTTP on Ray Serve (scripts/serve.py)",
    "evaluate": "evaluate a served policy or a checkpoint on a local env (scripts/evaluate.py)",
    "export": "export a checkpoint's policy to ONNX or TorchScript (scripts/export.py)",
    "tune": "search hyperparameters of a tuned example on Ray Tune (scripts/tune.py)",
    "convert-checkpoint": "rewrite an old checkpoint.pt as a checkpoint directory (scripts/convert_checkpoint.py)",
    "plot": "plot learning curves of runs, mean and 95% CI over seeds (scripts/plot.py)",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print("usage: rlfleet {" + ",".join(COMMANDS) + "} [options]\n"
              + "\n".join(f"  {k:{width}s} {v}" for k, v in COMMANDS.items()))
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        from rlfleet.scripts.train import main as run
    elif command == "regression":
        from rlfleet.scripts.run_regression import main as run
    elif command == "serve":
        from rlfleet.scripts.serve import main as run
    elif command == "evaluate":
        from rlfleet.scripts.evaluate import main as run
    elif command == "export":
        from rlfleet.scripts.export import main as run
    elif command == "tune":
        from rlfleet.scripts.tune import main as run
    elif command == "convert-checkpoint":
        from rlfleet.scripts.convert_checkpoint import main as run
    elif command == "plot":
        from rlfleet.scripts.plot import main as run
    else:
        from rlfleet.rl.config import closest

        print(f"rlfleet: error: unknown command {command!r}{closest(command, COMMANDS)} (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
