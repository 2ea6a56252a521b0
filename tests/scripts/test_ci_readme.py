""".ci/run proves the README: it first runs the README's two commands as the README writes
them (read from its first bash block, never copied into the script), with CI=true, in a
fresh environment where nothing else was installed; only then the extras. The tests it
runs again with the extras are those that skipped for want of one (tests/extras.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]
CI_RUN = REPO / ".ci" / "run"
EXTRACT = REPO / ".ci" / "readme_commands.py"


def readme_commands(readme: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXTRACT), str(readme)], capture_output=True, text=True, timeout=60)


def test_the_readme_opens_with_its_two_commands_and_the_extraction_gives_exactly_them():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[1:3] == ["", "```bash"] and lines[5] == "```", "the README's first lines are its two commands"
    done = readme_commands(REPO / "README.md")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == lines[3:5]
    install, test = lines[3:5]
    assert install.startswith("pip install torch==") and "pip install '.[test]'" in install and test == "python -m pytest"


def test_the_extraction_reads_the_first_bash_block_of_whatever_readme_it_is_given(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n```python\nnot this\n```\n\n```bash\n# a comment\nmake \\\n  all\n\nmake check\n```\n"
                      "```bash\nnor this\n```\n", encoding="utf-8")
    assert readme_commands(readme).stdout.splitlines() == ["make   all", "make check"]
    readme.write_text("# no commands\n", encoding="utf-8")
    done = readme_commands(readme)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert "no ```bash block" in done.stderr


def test_ci_runs_the_readme_commands_it_reads_first_then_installs_the_extras(tmp_path):
    """.ci/run on a stand-in clone whose README holds other commands, with a stand-in
    ``python3 -m venv`` whose pip only notes what it was asked (and fails, ending the run)."""
    repo = tmp_path / "clone"
    (repo / ".ci").mkdir(parents=True)
    for path in (CI_RUN, EXTRACT):
        shutil.copy(path, repo / ".ci" / path.name)
    (repo / "README.md").write_text(textwrap.dedent("""\
        # clone

        ```bash
        echo "first CI=$CI python=$(command -v python)" >> log && echo second >> log
        echo third >> log
        ```

        ```bash
        echo never >> log
        ```
        """), encoding="utf-8")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        if [ "$1 $2" = "-m venv" ]; then
            mkdir -p "$3/bin"
            echo "export PATH=\\"$PWD/$3/bin:\\$PATH\\"" > "$3/bin/activate"
            ln -s {sys.executable} "$3/bin/python"
            printf '#!/usr/bin/env bash\\necho "pip $*" >> log\\nexit 1\\n' > "$3/bin/pip"
            chmod +x "$3/bin/pip"
            exit 0
        fi
        exec {sys.executable} "$@"
        """), encoding="utf-8")
    (fake / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CI", None)
    done = subprocess.run(["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0  # the stand-in pip
    log = (repo / "log").read_text(encoding="utf-8").splitlines()
    assert log[:3] == [f"first CI=true python={repo}/.venv/bin/python", "second", "third"], done.stderr
    assert len(log) == 4 and log[3].startswith("pip install -q .[test,") and "tune" in log[3], log


def test_the_script_holds_no_copy_of_the_readme_commands():
    script = CI_RUN.read_text(encoding="utf-8")
    assert "readme_commands.py" in script
    lines = [line.strip() for line in script.splitlines()]
    for command in readme_commands(REPO / "README.md").stdout.splitlines():
        assert command not in lines
    assert "scripts/train.py --algo ppo --env CartPole-v1" not in script and "torch==" not in script


def pytest_in(directory: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """pytest on a test file outside tests/, with tests/conftest.py's hooks loaded (and not
    this run's CI variables: .ci/run's file of skips is not for these)."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("RLFLEET_EXTRA_SKIPS", "RLFLEET_REQUIRE_EXTRAS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(directory), "-c", os.devnull, "-q", "-rs", *args], cwd=directory,
                          env={**inherited, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True, timeout=120)


def test_a_missing_extra_skips_naming_it_is_noted_for_ci_and_fails_where_ci_requires_it(tmp_path):
    (tmp_path / "test_needs.py").write_text(textwrap.dedent("""\
        import pytest

        from tests.extras import needs_extra, require_extra


        def test_plain():
            pass


        def test_function_level():
            require_extra("atari", "rlfleet_no_such_module")


        @needs_extra("export", "json", "rlfleet_no_such_module")
        def test_marked():
            pass


        def test_present():
            assert require_extra("export", "json").dumps(1) == "1"


        def test_broken_package():
            import sys
            sys.modules["rlfleet_half_installed"] = None  # importing it raises ImportError
            require_extra("tune", "rlfleet_half_installed")
        """), encoding="utf-8")
    # a package that imports half (plain `ray`'s ray.serve), its message quoted both ways
    (tmp_path / "rlfleet_half.py").write_text("""raise ImportError('can\\'t: pip install "ray[serve]"')\n""")
    (tmp_path / "test_module_level.py").write_text(textwrap.dedent("""\
        from tests.extras import require_extra

        require_extra("serve", "rlfleet_half")


        def test_never():
            raise AssertionError
        """), encoding="utf-8")
    skips = tmp_path / "skips"
    done = pytest_in(tmp_path, "test_needs.py", "test_module_level.py", RLFLEET_EXTRA_SKIPS=str(skips))
    assert done.returncode == 0 and "2 passed, 4 skipped" in done.stdout, done.stdout + done.stderr
    for extra in ("atari", "export", "tune", "serve"):
        assert f"needs the '{extra}' extra: pip install 'rlfleet[{extra}]'" in done.stdout
    assert sorted(skips.read_text().splitlines()) == ["test_module_level.py"] + [
        f"test_needs.py::{t}" for t in ("test_broken_package", "test_function_level", "test_marked")]
    done = pytest_in(tmp_path, "test_needs.py", RLFLEET_REQUIRE_EXTRAS="export,tune")
    assert done.returncode == 1 and "1 failed, 2 passed, 1 skipped, 1 error" in done.stdout, done.stdout
    assert "RLFLEET_REQUIRE_EXTRAS names 'export', but the test needs the 'export' extra" in done.stdout


def test_no_test_skips_with_importorskip():
    """pytest.importorskip turns only ModuleNotFoundError into a skip: a package present
    without its own optional dependencies (ray.tune, ray.serve in plain `ray`) errors the
    README's test command. tests/extras.py's require_extra skips on any ImportError."""
    users = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "tests").rglob("*.py")
                   if path.name not in ("extras.py", "test_ci_readme.py")
                   and "importorskip(" in path.read_text(encoding="utf-8"))
    assert not users, f"use tests.extras.require_extra(extra, module) instead of pytest.importorskip in {users}"
