"""Videos of greedy episodes, as mp4 files: what evaluate.py ``--video`` and the driver's
``video_every`` write.

A :class:`Recorder` builds its own env from the run's creator with ``render_mode=
"rgb_array"`` added to ``env_config`` (a gymnasium id passes it to ``gym.make``, an Env
class and a registered creator receive it with the rest of the config) and checks, once,
that it renders frames. Each :meth:`Recorder.record` plays one episode with ``act`` and
streams its frames to ffmpeg through imageio (the ``video`` extra, which ships its own
ffmpeg binary): the reset frame, then one frame per step, so a video of an episode of T
steps has T + 1 frames. A file appears whole or not at all (written under a temporary
name beside it, then renamed).

``act(obs, first) -> action`` takes one observation of the env (unbatched) and is told
where an episode starts, so a policy with memory starts afresh; :func:`greedy_act` makes
one from a module spec and weights, as the evaluation runner acts.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import traceback
import uuid
import warnings
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import tree

from rlfleet.envs import EnvConfigError, EnvCreator, make_env_creator, probe_env
from rlfleet.rl.models.spec import ModuleSpec

Act = Callable[[Any, bool], Any]
"""``act(obs, first) -> action``: one env observation in, one env action out."""

INSTALL = "pip install 'rlfleet[video]'"
DEFAULT_FPS = 30.0
"""Frames per second of a video whose env names no ``render_fps`` in its metadata."""


class VideoError(ValueError):
    """No video can be written: the ``video`` extra is missing, the env renders no
    rgb_array frames, or the directory is not writable. The message is one line."""


@dataclasses.dataclass(frozen=True)
class Video:
    """One recorded episode."""

    path: str
    frames: int
    """Frames in the file: ``episode_length + 1`` (the reset frame, then one per step)."""
    episode_length: int
    episode_return: float
    seed: int
    """The seed the episode's env was reset with."""


def require_imageio() -> ModuleType:
    """``imageio.v2`` with its ffmpeg binary, or a one-line VideoError naming the extra."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg
    except ImportError as e:
        raise VideoError(f"videos need imageio and imageio-ffmpeg: {INSTALL} ({e})") from None
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:  # a wheel without its binary for this platform
        raise VideoError(f"imageio-ffmpeg finds no ffmpeg binary ({_first_line(e)}): {INSTALL}, "
                         "or set IMAGEIO_FFMPEG_EXE") from None
    return imageio


def check_video_dir(directory: str) -> None:
    """Refuse, in one line, a directory that videos cannot be written into (a file in
    the way, no permission, a name too long) before any episode is played. Leaves
    nothing behind: directories it made to try are removed again."""
    path = os.path.abspath(directory)
    missing = []
    while not os.path.isdir(path):
        if os.path.lexists(path):
            raise VideoError(f"cannot write videos into {directory!r}: {path!r} is a file, not a directory")
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
        with tempfile.TemporaryFile(dir=os.path.abspath(directory)):
            pass
    except OSError as e:
        raise VideoError(f"cannot write videos into {directory!r}: {e.strerror or e}") from None
    finally:
        for folder in reversed(created):
            os.rmdir(folder)


class Recorder:
    """Records episodes of one env to mp4 files; build it once and record many times
    (a MuJoCo env's GL context is made once). Raises VideoError at construction when
    imageio is missing or the env renders no rgb_array frames."""

    def __init__(self, creator: EnvCreator) -> None:
        self.imageio = require_imageio()
        self.name = creator.name
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            # pygame (classic control's renderer) probes SDL's video drivers and prints "error:
            # XDG_RUNTIME_DIR is invalid" without a display; off-screen drawing needs none
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        self.creator = make_env_creator(creator.env, {**creator.env_config, "render_mode": "rgb_array"})
        self.env = self._build()
        try:
            self.env.reset(seed=0)
            with warnings.catch_warnings():
                # glfw warns twice without a display before MuJoCo fails; the error below says it once
                warnings.filterwarnings("ignore", module="glfw")
                self.shape = self._frame().shape
        except BaseException:
            self.env.close()
            raise
        self.fps = float(self.env.metadata.get("render_fps") or DEFAULT_FPS)

    def _build(self) -> Any:
        try:
            with warnings.catch_warnings():
                # gymnasium warns of a render_mode outside the env's render_modes; the check below says it once
                warnings.filterwarnings("ignore", message=".*render_mode.*")
                env = probe_env(self.creator)
        except (EnvConfigError, TypeError) as e:
            # probe_env names a key the constructor does not take; a class with no __init__ says only
            # "takes no arguments": the env that builds without render_mode is the proof
            if not ("'render_mode'" in str(e) if isinstance(e, EnvConfigError) else self._builds_without()):
                raise
            raise VideoError(f"env {self.name!r} cannot render rgb_array frames: it takes no render_mode") from None
        except Exception as e:  # noqa: BLE001 - building a MuJoCo env can fail in OpenGL, with any kind
            if _gl_failure(e):
                raise VideoError(self._no_gl(e)) from None
            raise
        if getattr(env, "render_mode", None) != "rgb_array":
            modes = env.metadata.get("render_modes")
            env.close()
            raise VideoError(f"env {self.name!r} cannot render rgb_array frames: its render_mode is "
                             f"{getattr(env, 'render_mode', None)!r} (render_modes {modes})")
        return env

    def _builds_without(self) -> bool:
        """Whether the env builds from its own config, without render_mode."""
        config = {k: v for k, v in self.creator.env_config.items() if k != "render_mode"}
        try:
            make_env_creator(self.creator.env, config)().close()
        except Exception:  # noqa: BLE001 - whatever it is, render_mode is not the culprit alone
            return False
        return True

    def _frame(self) -> np.ndarray:
        """The env's current frame, checked: (H, W, 3) uint8; odd sides padded by one edge
        row or column (H.264 in yuv420p takes even sides only)."""
        try:
            frame = self.env.render()
        except Exception as e:  # noqa: BLE001 - a renderer fails with its own kinds (pygame, OpenGL, ...)
            if _gl_failure(e):
                raise VideoError(self._no_gl(e)) from None
            raise VideoError(f"env {self.name!r} cannot render rgb_array frames: render() raised "
                             f"{type(e).__name__}: {_first_line(e)}") from None
        if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
                and frame.dtype == np.uint8):
            got = (f"an array {frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray)
                   else type(frame).__name__)
            raise VideoError(f"env {self.name!r} cannot render rgb_array frames: render() returned {got}, "
                             "expected an (H, W, 3) uint8 array")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        return frame

    def _no_gl(self, e: BaseException) -> str:
        current = os.environ.get("MUJOCO_GL")
        backend = f"MUJOCO_GL={current}" if current else "MUJOCO_GL unset (glfw, which needs a display)"
        fix = ("install libEGL (a GPU driver's or Mesa's), or set MUJOCO_GL=osmesa with libOSMesa installed"
               if current == "egl" else "without a display, set MUJOCO_GL=egl")
        return (f"env {self.name!r} cannot render rgb_array frames: MuJoCo has no OpenGL context with {backend}; "
                f"{fix} ({type(e).__name__}: {_first_line(e)})")

    def record(self, act: Act, path: str, *, seed: int) -> Video:
        """Play one episode from ``reset(seed=seed)`` with ``act`` and write it to ``path``
        (an mp4; its directory is made if missing)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # ffmpeg picks the container by the suffix: the temporary name ends in .mp4 too
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp.mp4")
        writer = self.imageio.get_writer(temporary, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                                         macro_block_size=1)
        try:
            obs, _ = self.env.reset(seed=seed)
            length, total, done = 0, 0.0, False
            self._write(writer, path)
            while not done:
                obs, reward, terminated, truncated, _ = self.env.step(act(obs, length == 0))
                total += float(reward)
                length += 1
                done = terminated or truncated
                self._write(writer, path)
            writer.close()
            os.replace(temporary, path)
        except BaseException:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - ffmpeg failing again on close hides nothing we need
                pass
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        return Video(path, length + 1, length, total, seed)

    def _write(self, writer: Any, path: str) -> None:
        frame = self._frame()
        if frame.shape != self.shape:
            raise VideoError(f"env {self.name!r} rendered a frame of {frame.shape} after frames of {self.shape}: "
                             "a video's frames must keep one size")
        try:
            writer.append_data(frame)
        except (OSError, RuntimeError) as e:  # ffmpeg exited: a full disk, a killed process
            raise VideoError(f"writing {path!r}: ffmpeg failed ({type(e).__name__}: {_first_line(e)})") from None

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def record_episodes(creator: EnvCreator, act: Act, paths: Sequence[str], *, seeds: Sequence[int]) -> list[Video]:
    """Episode i from ``reset(seed=seeds[i])`` into ``paths[i]``, on one env built for it."""
    if len(paths) != len(seeds):
        raise ValueError(f"{len(paths)} paths for {len(seeds)} seeds")
    with Recorder(creator) as recorder:
        return [recorder.record(act, path, seed=seed) for path, seed in zip(paths, seeds)]


def greedy_act(module_spec: ModuleSpec, weights: dict[str, np.ndarray], *, connector_state: Any = None,
               seed: int = 0) -> Act:
    """The greedy ``act`` of a control policy, as the evaluation runner acts
    (rl/runners/env_runner.py ``EnvRunner.evaluate``): the acting module of ``module_spec``
    with ``weights``, observations normalised by the connector state (read only), the
    recurrent state zeroed where an episode starts."""
    from rlfleet.rl.connectors import MeanStdFilter
    from rlfleet.rl.spaces import actions_to_env

    policy = module_spec.build_acting(seed)
    policy.load(weights)
    normalise = None
    if connector_state is not None:
        normalise = MeanStdFilter(module_spec.observation_space)
        normalise.set_state(connector_state)
    memory = {"state": None}

    def act(obs: Any, first: bool) -> Any:
        batched = tree.map_structure(lambda x: np.asarray(x)[None], obs)  # (1, ...)
        if normalise is not None:
            batched = normalise(batched, update=False)
        if policy.state_size:
            if first:
                memory["state"] = np.zeros((1, policy.state_size), np.float32)
            actions, memory["state"] = policy.greedy(batched, memory["state"])
        else:
            actions = policy.greedy(batched)
        return tree.map_structure(lambda x: x[0], actions_to_env(actions, module_spec.action_space))

    return act


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _gl_failure(e: BaseException) -> bool:
    """Whether ``e`` came out of setting up OpenGL for MuJoCo: it names OpenGL, EGL or
    GLFW, or was raised inside PyOpenGL or glfw (an import of mujoco under MUJOCO_GL=osmesa
    without libOSMesa fails in PyOpenGL with an AttributeError)."""
    if any(word in str(e) for word in ("OpenGL", "EGL", "GLFW", "MUJOCO_GL")):
        return True
    return any(f"{os.sep}{package}{os.sep}" in frame.filename
               for frame in traceback.extract_tb(e.__traceback__) for package in ("OpenGL", "glfw"))
