"""Learning curves: ``rlfleet plot`` (scripts/plot.py, scripts/tools/plots.py) and
``run_regression.py --plot``.

The numbers are checked without matplotlib (hand-written progress files, hand-computed
means); drawing is checked on short real runs (3 seeds of the quick PPO CartPole example,
4096 env steps each, a few seconds), by reading the PNG back."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlfleet.scripts import cli
from rlfleet.scripts import plot as plot_cli
from rlfleet.scripts import run_regression
from rlfleet.scripts.tools import plots
from rlfleet.tuned_examples import ROOT as TUNED
from tests.extras import needs_extra

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARTPOLE = os.path.join(TUNED, "ppo", "CartPole-v1.yaml")
SEEDS = (0, 1, 2)
STEPS = 4096
TIMEOUT_S = 180
needs_plot = needs_extra("plot", "matplotlib")


def write_run(directory, rows):
    os.makedirs(directory)
    with open(os.path.join(directory, "progress.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(directory)


def rows_of(steps, returns, seconds=None):
    seconds = seconds or [s / 1000 for s in steps]
    return [{"iteration": i + 1, "env_steps": s, "time_s": t, "episode_return_mean": r, "episode_return_best": r}
            for i, (s, t, r) in enumerate(zip(steps, seconds, returns))]


@pytest.fixture
def hand_runs(tmp_path):
    """Three seeds with known values: seed 0 has no return yet in its first row (null),
    seed 2 logs at other env steps and stops earlier."""
    write_run(tmp_path / "cfg_s0", rows_of([100, 200, 300, 400], [None, 1.0, 2.0, 3.0]))
    write_run(tmp_path / "cfg_s1", rows_of([100, 200, 300, 400], [0.0, 2.0, 4.0, 6.0]))
    write_run(tmp_path / "cfg_s2", rows_of([150, 250, 350], [1.0, 3.0, 5.0]))
    return tmp_path


def test_curve_is_the_mean_over_seeds_on_the_grid_where_every_seed_has_data(hand_runs):
    (curve,) = plots.curves([str(hand_runs / "cfg_s*")], x="env_steps", metric="episode_return_mean")
    assert curve.label == str(hand_runs / "cfg_s*")
    assert curve.runs == [str(hand_runs / f"cfg_s{i}") for i in range(3)]
    # From the latest first value (seed 0's 200: its 100 is null) to the earliest last (seed 2's 350),
    # at every x some seed logged.
    np.testing.assert_array_equal(curve.x, [200, 250, 300, 350])
    # Linear interpolation between logged points: seed 0 at 250 is halfway from 1 to 2; seed 2 at 200 from 1 to 3.
    np.testing.assert_allclose(curve.per_seed, [[1.0, 1.5, 2.0, 2.5], [2.0, 3.0, 4.0, 5.0], [2.0, 3.0, 4.0, 5.0]])
    np.testing.assert_allclose(curve.mean, [5 / 3, 7.5 / 3, 10 / 3, 12.5 / 3])
    # The band holds the mean and stays within the seeds (a mean of resampled seeds cannot leave them).
    assert np.all(curve.low <= curve.mean) and np.all(curve.mean <= curve.high)
    assert np.all(curve.per_seed.min(axis=0) <= curve.low) and np.all(curve.high <= curve.per_seed.max(axis=0))
    assert np.all(curve.high - curve.low > 0)
    # Each seed's own points, as logged (the null row left out).
    np.testing.assert_array_equal(curve.seed_x[0], [200, 300, 400])
    np.testing.assert_array_equal(curve.seed_y[0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(curve.seed_x[2], [150, 250, 350])


def test_curve_band_is_reproducible_and_collapses_for_one_seed(hand_runs):
    group = [str(hand_runs / "cfg_s*")]
    a = plots.curves(group, x="env_steps", metric="episode_return_mean")[0]
    b = plots.curves(group, x="env_steps", metric="episode_return_mean")[0]
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)
    (one,) = plots.curves([str(hand_runs / "cfg_s1")], x="env_steps", metric="episode_return_mean", labels=["s1"])
    assert one.label == "s1"
    np.testing.assert_array_equal(one.x, [100, 200, 300, 400])
    np.testing.assert_array_equal(one.low, one.mean)
    np.testing.assert_array_equal(one.high, one.mean)


def test_curve_against_seconds_reads_time_s(hand_runs):
    (curve,) = plots.curves([str(hand_runs / "cfg_s1")], x="seconds", metric="episode_return_best")
    np.testing.assert_allclose(curve.x, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(curve.mean, [0.0, 2.0, 4.0, 6.0])


@pytest.mark.parametrize("make,args,needle", [
    (None, ["{tmp}/nothing_*"], "no run directory matches"),
    ("empty", ["{tmp}/empty"], "empty: no progress.jsonl"),
    ("runs", ["{tmp}/cfg_s*", "--metric", "episode_return_maen"], "unknown metric 'episode_return_maen'; did you mean 'episode_return_mean'?"),
    ("runs", ["{tmp}/cfg_s*", "{tmp}/cfg_s1", "--label", "only-one"], "1 label(s) for 2 group(s)"),
    ("runs", ["{tmp}/cfg_s*", "--out", "{tmp}/missing/curves.png"], "no directory"),
    ("runs", ["{tmp}/cfg_s*", "--out", "{tmp}/curves.svg"], "name the file *.png"),
])
@needs_plot
def test_bad_input_is_one_line_exit_2_and_no_png(hand_runs, capsys, make, args, needle):
    tmp = str(hand_runs)
    if make == "empty":
        os.makedirs(os.path.join(tmp, "empty"))
    argv = [a.format(tmp=tmp) for a in args]
    if "--out" not in argv:
        argv += ["--out", os.path.join(tmp, "curves.png")]
    before = set(os.listdir(tmp))
    assert plot_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.startswith("plot.py: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert set(os.listdir(tmp)) - before <= {"empty"}  # no PNG, no temporary file
    assert not glob.glob(os.path.join(tmp, "**", "*.png"), recursive=True)


def test_without_matplotlib_plotting_names_the_extra(hand_runs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = hand_runs / "curves.png"
    assert plot_cli.main([str(hand_runs / "cfg_s*"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'rlfleet[plot]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # run_regression.py refuses before it runs a seed.
    assert run_regression.main([CARTPOLE, "--plot", str(out)]) == 2
    captured = capsys.readouterr()
    assert "pip install 'rlfleet[plot]'" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == "" and not out.exists()


@pytest.fixture(scope="module")
def cartpole_runs(tmp_path_factory):
    """Three seeds of the quick PPO CartPole example, 4096 env steps each (exit 1: the
    return target is far off), run side by side."""
    root = tmp_path_factory.mktemp("cartpole")
    procs = [subprocess.Popen([sys.executable, "-m", "rlfleet.scripts.train", "--config", CARTPOLE, "--seed", str(seed),
                               "--stop-timesteps", str(STEPS), "--logdir", str(root / f"ppo_s{seed}"), "--quiet"],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in SEEDS]
    for proc in procs:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode in (0, 1), out
    return root


def progress_rows(run):
    with open(os.path.join(run, "progress.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@needs_plot
def test_rlfleet_plot_writes_the_png_of_the_runs_data(cartpole_runs, monkeypatch, capsys):
    from matplotlib.image import imread

    drawn = []
    draw = plots.draw_curves
    monkeypatch.setattr(plots, "draw_curves", lambda found, *a, **kw: (drawn.extend(found), draw(found, *a, **kw)))
    out = cartpole_runs / "curves.png"
    group = str(cartpole_runs / "ppo_s*")
    assert cli.main(["plot", group, "--x", "env_steps", "--out", str(out), "--title", "PPO CartPole"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = imread(str(out))
    width, height = plots.FIGSIZE
    assert image.shape[:2] == (round(height * plots.DPI), round(width * plots.DPI))
    assert not [p for p in os.listdir(cartpole_runs) if p.endswith(".tmp")]

    # What was drawn is the runs' progress rows: each seed as logged, and their mean per env step.
    (curve,) = drawn
    runs = [str(cartpole_runs / f"ppo_s{s}") for s in SEEDS]
    assert curve.runs == runs and curve.label == group
    logged = [[r for r in progress_rows(run) if r["episode_return_mean"] is not None] for run in runs]
    for rows, xs, ys in zip(logged, curve.seed_x, curve.seed_y):
        assert rows[-1]["env_steps"] == STEPS
        np.testing.assert_array_equal(xs, [r["env_steps"] for r in rows])
        np.testing.assert_array_equal(ys, [r["episode_return_mean"] for r in rows])
    # Same iteration size in every seed: the grid is the logged env steps, nothing interpolated.
    values = [{r["env_steps"]: r["episode_return_mean"] for r in rows} for rows in logged]
    common = sorted(set.intersection(*(set(v) for v in values)))
    np.testing.assert_array_equal(curve.x, common)
    np.testing.assert_allclose(curve.mean, [np.mean([v[s] for v in values]) for s in common])
    assert np.all(curve.low <= curve.mean + 1e-9) and np.all(curve.mean <= curve.high + 1e-9)


@needs_plot
def test_plot_against_seconds_with_labels(cartpole_runs):
    out = cartpole_runs / "seconds.png"
    argv = [str(cartpole_runs / "ppo_s*"), str(cartpole_runs / "ppo_s0"), "--label", "3 seeds", "--label", "seed 0",
            "--x", "seconds", "--metric", "episode_return_max", "--out", str(out)]
    assert plot_cli.main(argv) == 0 and out.stat().st_size > 0


EXAMPLE = """
algo: ppo
env: CartPole-v1
tags: [quick]
config: {{num_envs_per_runner: 8, rollout_fragment_length: 32, minibatch_size: 128, num_epochs: 2}}
pass: {{episode_return_mean: 475, env_steps: {steps}, time_s: {seconds}}}
"""


@needs_plot
def test_run_regression_plots_each_examples_seeds_and_keeps_the_results_json(tmp_path):
    from matplotlib.image import imread

    example = tmp_path / "cartpole.yaml"
    example.write_text(EXAMPLE.format(steps=3072, seconds=60))
    out, results = tmp_path / "regression.png", tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "scripts/run_regression.py", str(example), "--seeds", "1",
                           "--set", "num_epochs=1", "--plot", str(out), "--out", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 475 is not reached in 3072 env steps
    assert f"wrote {out}" in proc.stdout and "FAIL" in proc.stdout
    assert imread(str(out)).shape[:2] == (400, 600)  # one 6 x 4 inch panel at 100 dpi
    (summary,) = json.loads(results.read_text())["examples"].values()
    (seed,) = summary["seeds"]
    assert "curve" not in seed and seed["env_steps"] == 3072  # the results JSON is as before


def test_seed_result_keeps_the_curve_of_its_progress_rows(tmp_path):
    from rlfleet.scripts.tools import regression
    from rlfleet.scripts.tools.experiment import load_experiment

    example = tmp_path / "cartpole.yaml"
    example.write_text(EXAMPLE.format(steps=1024, seconds=60))
    result = regression.run_seed(load_experiment(str(example)), 0, run_regression.TRAIN_COMMAND, ["num_epochs=1"])
    assert result.exit_code == 1 and result.env_steps == 1024
    steps = [row[0] for row in result.curve]
    assert steps == sorted(steps) and steps[-1] == 1024 and all(isinstance(row[2], float) for row in result.curve)
    assert "curve" not in regression.summarise("x", [result])["seeds"][0]


@needs_plot
def test_regression_panels_draw_limits_and_seeds_that_ran_past_the_wall_limit(tmp_path):
    from matplotlib.image import imread

    panels = [plots.RegressionPanel(title="a: FAIL (0/2 seeds)", metric="episode_return_mean", threshold=10.0,
                                    env_steps=300, time_s=0.25,
                                    seeds=[(0, [(100, 0.1, 1.0), (200, 0.2, 5.0), (300, 0.3, 9.0)]), (1, [])]),
              plots.RegressionPanel(title="b: PASS", metric="win_rate", threshold=0.5, env_steps=None, time_s=None,
                                    seeds=[(0, [(10, 0.1, 0.2), (20, 0.2, 0.7)])]),
              plots.RegressionPanel(title="c: no seed", metric="episode_return_mean", threshold=1.0, env_steps=10,
                                    time_s=1.0, seeds=[])]
    out = tmp_path / "panels.png"
    plots.draw_regression(panels, str(out))
    assert imread(str(out)).shape[:2] == (800, 1200)  # 2 x 2 grid of 6 x 4 inch panels
