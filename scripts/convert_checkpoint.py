"""Rewrite an old checkpoint (format 2: one ``checkpoint.pt``, rlfleet 0.2) as a checkpoint
directory of this version (format 3: weights in safetensors, the rest in JSON, optimisers
and RNG in trainer.pt, a model card).

    python scripts/convert_checkpoint.py runs/ppo_CartPole-v1_X/checkpoint runs/ppo_CartPole-v1_X/checkpoint-v3
    rlfleet convert-checkpoint OLD_DIR_OR_FILE NEW_DIR

Reading the old file unpickles it (``torch.load(weights_only=True)``: tensors and plain
values only): convert only checkpoints you trust. The old file is left as it was; NEW_DIR
must be new (or empty). Exit codes: 0 converted, 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Rewrite an old rlfleet checkpoint.pt as a checkpoint directory.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 converted; 2 bad input (one line)")
    p.add_argument("old", metavar="OLD_DIR_OR_FILE", help="the old checkpoint directory, or its checkpoint.pt")
    p.add_argument("new", metavar="NEW_DIR", help="the checkpoint directory to write (must be new)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlfleet.algorithms import UnknownAlgorithmError, get_config_class
    from rlfleet.rl.checkpoint import CheckpointError, CheckpointWriteError
    from rlfleet.rl.checkpoint_state import convert_checkpoint

    def fail(message: str) -> int:
        print(f"convert_checkpoint.py: error: {message}", file=sys.stderr)
        return 2

    def algorithm_of(name: str) -> type | None:
        try:
            return get_config_class(name).algorithm_class(None)  # type: ignore[arg-type]
        except UnknownAlgorithmError:
            return None  # an algorithm this version no longer has: converted all the same

    try:
        written = convert_checkpoint(args.old, args.new, algorithm_of=algorithm_of)
    except (CheckpointError, CheckpointWriteError) as e:
        return fail(str(e))
    print(f"wrote {written} from {args.old}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
