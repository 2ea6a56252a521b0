"""Export a checkpoint's policy to run without this library.

    python scripts/export.py --checkpoint runs/ppo_Pendulum-v1_X/checkpoint
    python scripts/export.py --checkpoint DIR --format onnx --out policy.onnx
    rlfleet export --checkpoint DIR --format torchscript

ONNX (default) writes one file holding the observation normalisation, the deterministic
policy and the action post-processing, plus ``<out>.json``: the contract (spaces, dtypes,
input and output names, weights version, algorithm). Run it with onnxruntime alone:

    import json, numpy as np, onnxruntime as ort
    contract = json.load(open("policy.onnx.json"))
    session = ort.InferenceSession("policy.onnx")
    actions = session.run(None, {"obs": np.zeros((1, 3), np.float32)})[0]

``--format torchscript`` writes the same graph as a TorchScript file (``torch.jit.load``).
An existing output is kept unless ``--overwrite``. Exit codes: 0 written, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export an rlfleet checkpoint's policy (ONNX or TorchScript).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 written; 2 bad input (one line)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (or its state.json)")
    p.add_argument("--policy-id", help="of a multi-agent checkpoint: the policy to export")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument("--out", help="output file (default: policy.onnx / policy.pt beside the checkpoint directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlfleet.rl.checkpoint import OWN_FILES, CheckpointError
    from rlfleet.rl.export import ExportError, export_onnx, export_torchscript
    from rlfleet.rl.inference import Policy

    def fail(message: str) -> int:
        print(f"export.py: error: {message}", file=sys.stderr)
        return 2

    suffix = ".onnx" if args.format == "onnx" else ".pt"
    # beside the checkpoint directory, not in it: a save replaces the directory whole
    directory = os.path.abspath(args.checkpoint)
    directory = os.path.dirname(directory) if os.path.basename(directory) in OWN_FILES else directory
    out = args.out or os.path.join(os.path.dirname(directory), "policy" + (f"-{args.policy_id}" if args.policy_id else "") + suffix)
    if not out.endswith(suffix):
        return fail(f"--out {out!r}: a {args.format} file must end in {suffix}")
    try:
        policy = Policy.load(args.checkpoint, policy_id=args.policy_id)
        if os.path.exists(out) and not args.overwrite:
            return fail(f"{out} exists; give --overwrite to replace it, or another --out")
        if args.format == "onnx":
            export_onnx(policy, out)
        else:
            export_torchscript(policy, out)
    except (CheckpointError, ExportError) as e:
        return fail(str(e))
    except OSError as e:  # a directory without write permission, a full disk
        return fail(f"cannot write {out}: {e.strerror or e}")
    print(f"wrote {out}" + (f" and {out}.json" if args.format == "onnx" else "") +
          f" ({policy.algo} on {policy.env}, weights version {policy.weights_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
