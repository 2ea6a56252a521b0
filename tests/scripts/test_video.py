"""Videos of episodes (issue 34): rl/video.py's recorder on a tiny env whose frames we know,
and evaluate.py --video as a user runs it, on a checkpoint of a short CartPole run.

A video holds the reset frame and one frame per step: an episode of T steps is T + 1
frames. Every error is one line on stderr, exit 2, with nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

from tests.cli_checks import one_line_error as check_one_line
from tests.extras import needs_extra

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVALUATE = os.path.join(REPO, "scripts", "evaluate.py")
CARTPOLE_FRAME = (400, 600, 3)
# CartPole and Pendulum draw their frames with pygame (gymnasium[classic-control])
VIDEO = ("video", "imageio", "imageio_ffmpeg")
CLASSIC_VIDEO = (*VIDEO, "pygame")


def evaluate(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EVALUATE, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line_error(run, *needles):
    return check_one_line(run, "evaluate.py", *needles)


def read_video(path: str) -> list[np.ndarray]:
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return [frame for frame in reader]


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# -- the recorder on an env of our own -------------------------------------------------------------


class Steps(gym.Env):
    """Episodes of ``length`` steps; frame t is grey level 40 t, so a video shows their order."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, length: int = 5, size: tuple[int, int] = (32, 48), render_mode: str | None = None,
                 grow_at: int = -1, blank: bool = False) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.length, self.size, self.render_mode, self.grow_at, self.blank = length, size, render_mode, grow_at, blank
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(action), self.t >= self.length, False, {}

    def render(self):
        if self.blank:
            return None
        h, w = self.size
        if self.t == self.grow_at:
            h += 2
        return np.full((h, w, 3), 40 * self.t, np.uint8)


class NoRenderMode(gym.Env):
    """Takes no arguments at all (gym.Env has no __init__)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)


class TwoChannels(Steps):
    def render(self):
        return np.zeros((*self.size, 2), np.uint8)


@needs_extra(*VIDEO)
def test_recorder_writes_the_reset_frame_and_one_frame_per_step(tmp_path):
    from rlfleet.envs import make_env_creator
    from rlfleet.rl.video import record_episodes

    paths = [str(tmp_path / "videos" / "a.mp4"), str(tmp_path / "videos" / "b.mp4")]  # the folder is made
    videos = record_episodes(make_env_creator(Steps, {"length": 5}), lambda obs, first: 1, paths, seeds=[3, 4])
    assert [(v.path, v.frames, v.episode_length, v.episode_return, v.seed) for v in videos] == [
        (paths[0], 6, 5, 5.0, 3), (paths[1], 6, 5, 5.0, 4)]
    assert listing(tmp_path / "videos") == ["a.mp4", "b.mp4"]  # no temporary file left
    frames = read_video(paths[0])
    assert len(frames) == 6 and all(f.shape == (32, 48, 3) for f in frames)
    levels = [float(f.mean()) for f in frames]
    assert all(abs(level - 40 * t) < 6 for t, level in enumerate(levels)), levels  # in order, lossy


@needs_extra(*VIDEO)
def test_recorder_pads_odd_frames_to_even_sides(tmp_path):
    """H.264 in yuv420p takes even sides: a 31 x 47 frame is padded by one edge row and column."""
    from rlfleet.envs import make_env_creator
    from rlfleet.rl.video import record_episodes

    [video] = record_episodes(make_env_creator(Steps, {"length": 2, "size": (31, 47)}), lambda obs, first: 0,
                              [str(tmp_path / "odd.mp4")], seeds=[0])
    frames = read_video(video.path)
    assert video.frames == len(frames) == 3 and frames[0].shape == (32, 48, 3)


@needs_extra(*VIDEO)
def test_the_act_function_is_told_where_each_episode_starts(tmp_path):
    from rlfleet.envs import make_env_creator
    from rlfleet.rl.video import Recorder

    seen = []
    with Recorder(make_env_creator(Steps, {"length": 3})) as recorder:
        for name in ("a", "b"):
            recorder.record(lambda obs, first: seen.append(first) or 0, str(tmp_path / f"{name}.mp4"), seed=0)
    assert seen == [True, False, False] * 2


@needs_extra(*VIDEO)
def test_a_failed_episode_leaves_the_previous_file_whole_and_no_temporary(tmp_path):
    from rlfleet.envs import make_env_creator
    from rlfleet.rl.video import Recorder

    path = tmp_path / "a.mp4"
    path.write_bytes(b"the video of an earlier run")

    def act(obs, first):
        if not first:
            raise RuntimeError("the policy broke")
        return 0

    with Recorder(make_env_creator(Steps, {"length": 4})) as recorder:
        with pytest.raises(RuntimeError, match="the policy broke"):
            recorder.record(act, str(path), seed=0)
    assert path.read_bytes() == b"the video of an earlier run"
    assert listing(tmp_path) == ["a.mp4"]


@pytest.mark.parametrize("env,config,needle", [
    (NoRenderMode, {}, "cannot render rgb_array frames: it takes no render_mode"),
    (Steps, {"blank": True}, "cannot render rgb_array frames: render() returned NoneType"),
    (TwoChannels, {}, "render() returned an array (32, 48, 2) uint8, expected an (H, W, 3) uint8 array"),
])
@needs_extra(*VIDEO)
def test_an_env_without_rgb_array_frames_is_one_error_naming_it(tmp_path, env, config, needle):
    from rlfleet.envs import make_env_creator
    from rlfleet.rl.video import Recorder, VideoError

    with pytest.raises(VideoError) as raised:
        Recorder(make_env_creator(env, config))
    message = str(raised.value)
    assert f"env {env.__name__!r}" in message and needle in message and "\n" not in message
    assert listing(tmp_path) == []


@needs_extra(*VIDEO)
def test_a_frame_of_another_size_mid_episode_is_one_error_and_no_file(tmp_path):
    from rlfleet.envs import make_env_creator
    from rlfleet.rl.video import Recorder, VideoError

    with Recorder(make_env_creator(Steps, {"length": 4, "grow_at": 2})) as recorder:
        with pytest.raises(VideoError, match=r"rendered a frame of \(34, 48, 3\) after frames of \(32, 48, 3\)"):
            recorder.record(lambda obs, first: 0, str(tmp_path / "a.mp4"), seed=0)
    assert listing(tmp_path) == []


@needs_extra(*CLASSIC_VIDEO)
def test_greedy_act_acts_as_evaluate_does_from_the_checkpoint(tmp_path):
    """The driver's call for ``video_every`` (greedy_act on the learner's weights and the
    connector state, a Recorder on the run's env creator) plays the episode that the saved
    checkpoint plays through rl/inference.py Policy, as evaluate.py acts: same normalised
    observations, same recurrent state."""
    import tree

    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.rl.inference import Policy
    from rlfleet.rl.video import Recorder, greedy_act

    algo = PPOConfig(env="Pendulum-v1", normalize_obs=True, memory="gru", memory_size=8, max_seq_len=16,
                     num_envs_per_runner=4, rollout_fragment_length=32, minibatch_size=64, num_epochs=1,
                     seed=1).build()
    try:
        algo.train()
        algo.save(str(tmp_path / "checkpoint"))
        act = greedy_act(algo.module_spec, algo.acting_weights(algo.learner_group.get_weights()),
                         connector_state=algo.connector_state(), seed=algo.config.seed)
        with Recorder(algo.runner_factory.env_creator) as recorder:
            video = recorder.record(act, str(tmp_path / "videos" / "iteration_000001.mp4"), seed=7)
    finally:
        algo.stop()
    assert video.frames == 201 and video.episode_length == 200

    policy = Policy.load(str(tmp_path / "checkpoint"))
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=7)
    total, done, state = 0.0, False, None
    while not done:
        out = policy.act(tree.map_structure(lambda x: np.asarray(x)[None], obs), state=state)
        state = out["state"]
        obs, reward, terminated, truncated, _ = env.step(out["actions"][0])
        total += float(reward)
        done = terminated or truncated
    assert video.episode_return == pytest.approx(total, rel=1e-3)


# -- evaluate.py --video ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The checkpoint of a very short PPO run on CartPole, as train.py writes it."""
    logdir = tmp_path_factory.mktemp("run") / "ppo"
    run = subprocess.run([sys.executable, "-m", "rlfleet.scripts.train", "--algo", "ppo", "--env", "CartPole-v1",
                          "--stop-timesteps", "2048", "--logdir", str(logdir), "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    # 1: the tuned example's return target, not reached in 2048 steps
    assert run.returncode in (0, 1) and (logdir / "checkpoint").is_dir(), run.stdout + run.stderr
    return str(logdir / "checkpoint")


def check_videos(summary: dict, folder, count: int) -> None:
    """``count`` playable videos of the first episodes: each of the evaluated episode's
    length + 1 frames (the reset frame), CartPole's 400 x 600 frames."""
    videos = summary["videos"]
    assert len(videos) == count
    assert listing(folder) == [f"episode_{i:03d}_seed{i}.mp4" for i in range(count)]
    for i, video in enumerate(videos):
        assert video["path"] == os.path.join(str(folder), f"episode_{i:03d}_seed{i}.mp4") and video["seed"] == i
        # CartPole pays 1 a step: the evaluated return is the episode's length, replayed from its seed
        assert video["episode_return"] == summary["returns"][i] == video["episode_length"]
        frames = read_video(video["path"])
        assert len(frames) == video["frames"] == video["episode_length"] + 1
        assert {f.shape for f in frames} == {CARTPOLE_FRAME}


@needs_extra(*CLASSIC_VIDEO)
def test_evaluate_checkpoint_writes_one_playable_mp4_per_episode(checkpoint, tmp_path):
    folder = tmp_path / "videos" / "new"  # made, parents too
    run = evaluate("--checkpoint", checkpoint, "--episodes", "2", "--video", str(folder), "--json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr
    check_videos(json.loads(run.stdout), folder, 2)


@needs_extra(*CLASSIC_VIDEO)
def test_evaluate_records_the_first_k_episodes_and_says_where(checkpoint, tmp_path):
    run = evaluate("--checkpoint", checkpoint, "--episodes", "3", "--video", str(tmp_path), "--video-episodes", "1")
    assert run.returncode == 0, run.stderr
    assert listing(tmp_path) == ["episode_000_seed0.mp4"]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith(f"video {tmp_path / 'episode_000_seed0.mp4'}: ") and "the reset frame and" in lines[-1]


@needs_extra("export", "onnx", "onnxruntime")
@needs_extra(*CLASSIC_VIDEO)
def test_evaluate_onnx_writes_the_same_videos(checkpoint, tmp_path):
    model = str(tmp_path / "policy.onnx")
    export = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "export.py"), "--checkpoint", checkpoint,
                             "--out", model], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    run = evaluate("--onnx", model, "--episodes", "2", "--video", str(tmp_path / "videos"), "--json")
    assert run.returncode == 0, run.stderr
    check_videos(json.loads(run.stdout), tmp_path / "videos", 2)


# -- evaluate.py --video: errors -------------------------------------------------------------------


@pytest.mark.parametrize("extra,needle", [
    (("--video-episodes", "1"), "--video-episodes needs --video DIR"),
    (("--video", "V", "--video-episodes", "0"), "--video-episodes must be in 1..--episodes (2), got 0"),
    (("--video", "V", "--video-episodes", "3"), "--video-episodes must be in 1..--episodes (2), got 3"),
])
def test_video_episodes_out_of_range_is_one_line(tmp_path, extra, needle):
    run = evaluate("--checkpoint", str(tmp_path / "none"), "--episodes", "2", *extra)
    one_line_error(run, needle)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("where", ["a file", "below a file", "a name too long"])
@needs_extra(*VIDEO)
def test_a_video_dir_that_cannot_be_written_is_one_line_and_nothing_is_written(checkpoint, tmp_path, where):
    (tmp_path / "file").write_text("mine\n")
    target = {"a file": tmp_path / "file", "below a file": tmp_path / "file" / "videos",
              "a name too long": tmp_path / "new" / ("v" * 300)}[where]
    run = evaluate("--checkpoint", checkpoint, "--episodes", "1", "--video", str(target))
    needle = "File name too long" if where == "a name too long" else f"{str(tmp_path / 'file')!r} is a file"
    one_line_error(run, f"--video: cannot write videos into {str(target)!r}", needle)
    assert listing(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "mine\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")
@needs_extra(*VIDEO)
def test_a_video_dir_without_permission_is_one_line(checkpoint, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        run = evaluate("--checkpoint", checkpoint, "--episodes", "1", "--video", str(locked / "videos"))
        one_line_error(run, "Permission denied")
        assert listing(locked) == []
    finally:
        locked.chmod(0o700)


def test_without_the_video_extra_the_error_names_it(tmp_path):
    """imageio blocked from importing: runs with or without the extra."""
    code = ("import sys; sys.modules['imageio'] = None; sys.argv[0] = 'evaluate.py'; "
            "from rlfleet.scripts.evaluate import main; "
            f"sys.exit(main(['--checkpoint', 'none', '--video', {str(tmp_path / 'v')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    one_line_error(run, "videos need imageio and imageio-ffmpeg: pip install 'rlfleet[video]'")
    assert listing(tmp_path) == []


NO_FRAMES = '''
import gymnasium as gym
import numpy as np
from rlfleet.envs import register_env


class Dark(gym.Env):
    """CartPole's spaces; rgb_array accepted, no frame ever drawn."""
    metadata = {"render_modes": ["rgb_array"]}
    observation_space = gym.spaces.Box(-5.0, 5.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        return np.zeros(4, np.float32), {}

    def render(self):
        return None


class Old(Dark):
    """No render_mode argument."""
    def __init__(self):
        pass


register_env("Dark-v0", lambda config: Dark(**config))
register_env("Old-v0", lambda config: Old(**config))
'''


@pytest.mark.parametrize("env,needle", [("Dark-v0", "render() returned NoneType"), ("Old-v0", "takes no render_mode")])
@needs_extra(*VIDEO)
def test_evaluate_on_an_env_that_renders_no_frames_is_one_line_naming_it(checkpoint, tmp_path, env, needle):
    module = tmp_path / "noframes.py"
    module.write_text(textwrap.dedent(NO_FRAMES))
    run = evaluate("--checkpoint", checkpoint, "--episodes", "1", "--env", env, "--import", str(module),
                   "--video", str(tmp_path / "videos"))
    one_line_error(run, f"env {env!r} cannot render rgb_array frames", needle)
    assert "videos" not in listing(tmp_path)


# -- MuJoCo: which OpenGL backend renders here -----------------------------------------------------


RECORD_CHEETAH = '''
import json, sys
from rlfleet.envs import make_env_creator
from rlfleet.rl.video import VideoError, record_episodes
try:
    [v] = record_episodes(make_env_creator("HalfCheetah-v5", {"max_episode_steps": 3}),
                          lambda obs, first: obs[:6] * 0, [sys.argv[1]], seeds=[0])
    print(json.dumps({"frames": v.frames}))
except VideoError as e:
    print(json.dumps({"error": str(e)}))
'''


@needs_extra("mujoco", "mujoco")
@needs_extra(*VIDEO)
@pytest.mark.parametrize("backend", ["egl", "glfw"])
def test_mujoco_renders_or_says_which_mujoco_gl_to_set(tmp_path, backend):
    """Headless, MUJOCO_GL=egl renders (Mesa's llvmpipe here, a GPU's EGL elsewhere); glfw
    needs a display. Either the video is written, or one line names MUJOCO_GL."""
    if backend == "glfw" and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("a display: glfw may render")
    out = str(tmp_path / "cheetah.mp4")
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", RECORD_CHEETAH, out], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "MUJOCO_GL": backend})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if backend == "glfw" or "error" in result:
        assert "cannot render rgb_array frames: MuJoCo has no OpenGL context" in result["error"]
        assert ("set MUJOCO_GL=egl" if backend == "glfw" else "MUJOCO_GL=osmesa") in result["error"]
        assert not os.path.exists(out)
    else:
        assert result == {"frames": 4} and len(read_video(out)) == 4


# -- video_every: an evaluation episode recorded while training ------------------------------------


@needs_extra(*CLASSIC_VIDEO)
def test_video_every_records_a_greedy_episode_every_n_iterations(tmp_path):
    from rlfleet.algorithms.ppo.config import PPOConfig

    logdir = tmp_path / "run"
    algo = PPOConfig(env="CartPole-v1", num_envs_per_runner=4, rollout_fragment_length=32, minibatch_size=64,
                     video_every=2, logdir=str(logdir)).build()
    try:
        rows = [algo.train() for _ in range(4)]
    finally:
        algo.stop()
    assert listing(logdir / "videos") == ["iteration_000002.mp4", "iteration_000004.mp4"]
    for row in (rows[1], rows[3]):
        frames = read_video(str(logdir / "videos" / f"iteration_{row['iteration']:06d}.mp4"))
        # the reset frame and one per step; CartPole's return is its length
        assert len(frames) == row["video/frames"] == row["video/episode_return"] + 1
        assert frames[0].shape == CARTPOLE_FRAME
    assert "video/frames" not in rows[0] and "video/frames" not in rows[2]


def test_video_every_without_a_logdir_is_refused():
    from rlfleet.algorithms.ppo.config import PPOConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match="^video_every writes into LOGDIR/videos: set logdir too$"):
        PPOConfig(env="CartPole-v1", video_every=1).build()


@needs_extra("pettingzoo", "pettingzoo")
def test_video_every_on_a_multi_agent_env_is_refused(tmp_path):
    from rlfleet.algorithms.ppo.config import PPOConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match="^video_every is built for gymnasium envs only, not multi-agent envs yet"):
        PPOConfig(env="pettingzoo:pettingzoo.classic.rps_v2", video_every=1, logdir=str(tmp_path / "run")).build()
