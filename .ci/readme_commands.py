"""Print the commands of the README's first ```bash block, one a line, as the README writes
them: .ci/run runs exactly these, so CI proves what a newcomer types.

    python3 .ci/readme_commands.py [README]

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import pathlib
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[str]:
    """The lines of the first ```bash block, blank lines and comments left out; a line
    ending in a backslash goes on on the next."""
    lines = text.splitlines()
    try:
        start = lines.index("```bash") + 1
        end = lines.index("```", start)
    except ValueError:
        raise ValueError("no ```bash block closed by ``` on a line of its own") from None
    commands, pending = [], ""
    for line in lines[start:end]:
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    if pending or not commands:
        raise ValueError("its first ```bash block holds no whole command")
    return commands


def main(argv: list[str]) -> int:
    path = pathlib.Path(argv[1]) if len(argv) > 1 else README
    try:
        commands = readme_commands(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"readme_commands.py: {path}: {e}", file=sys.stderr)
        return 2
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
