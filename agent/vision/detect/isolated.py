"""Model inference in a process of its own, so that a model cannot take the lamps down.

A model runtime is native code. A model file or a frame that crashes it (a segfault in
``tflite-runtime`` on a truncated flatbuffer, an abort in onnxruntime) kills the process it
runs in, and a runtime that hangs holds whoever called it. In ``agent run`` the process
that runs the cameras also drives the lamps, so inference runs elsewhere, as Frigate runs
its detectors: :class:`ModelHost` starts ``python -m agent.vision.detect.host`` and loads
models in it (:class:`ModelHosts`: one process for every onnxruntime model, the cameras'
and the dimming model, a session per card shared by the cameras that use it as
:class:`~agent.vision.detect.runtime.SharedRuntimes` shares one; a process per camera for
TFLite), and each camera talks to it through an :class:`IsolatedRuntime`: a *lane* (its
own socket) and the lane's shared memory (a ``memfd`` both processes map), where the
camera writes the input tensor and the model process writes the outputs. Per frame only
two small JSON messages cross the socket.

What happens when the model process fails:

- **it crashes** (dies by a signal, or exits) or **hangs** (no answer within
  :data:`RUN_DEADLINE_S`, then it is killed): the frame in flight raises
  :class:`~agent.vision.detect.runtime.RuntimeUnavailable`, naming what happened (the
  signal, or the deadline); every camera on that process is ``model_down`` (reported as
  ``camera_lost``: the lighting service falls back for their groups as for a dead camera),
  and the dimming model's proposals are refused (adaptive steps at the safe level);
- it is **restarted with back-off**: the first camera frame after :data:`BACKOFF_MIN_S`
  starts it again, then after twice as long each time it fails again, at most
  :data:`BACKOFF_MAX_S`; a process that has served :data:`STABLE_S` resets the back-off.
  Frames meanwhile are not analysed (``framesAnalysed`` says so), and the camera is
  ``camera_restored`` once a frame is analysed again;
- a model that cannot be loaded (its card, its file, a crash or a hang while loading) is
  a :class:`~agent.settings.modelcard.ModelError`, as it was in the same process: the
  camera is ``model_error``, not started; the other models in the process go on (after a
  restart, if the load took it down).

The agent's own process never imports a model runtime. ``agent count``, ``agent validate
--check-models`` and the benches still run models in their own process (with the TFLite
probe, ``detect.probe``): a crash there ends a tool, not the lamps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.settings.modelcard import ModelCard, ModelError
from agent.vision.detect.host import align, receive, send
from agent.vision.detect.probe import CRASHES
from agent.vision.detect.runtime import (
    SHAREABLE,
    RuntimeUnavailable,
    TensorInfo,
    card_key,
    find_output,
)

log = logging.getLogger(__name__)

#: Seconds one inference may take before the model process is taken for hung and killed
#: (YOLOX-Nano runs in well under a second on a Raspberry Pi 4 core). With
#: :data:`LOAD_DEADLINE_S` it stays under the camera worker's 60 s bound.
RUN_DEADLINE_S = 15.0
#: Seconds a restart may take to load the model and say hello.
LOAD_DEADLINE_S = 25.0
#: Seconds a start, or a model's first load, may take (at the agent's start or a reload:
#: a cold SD card on a slow pole; under the service watchdog's 30 s).
FIRST_LOAD_DEADLINE_S = 20.0
#: The most shared memory one lane may map (an input tensor and its outputs).
MAX_LANE_BYTES = 256 << 20
#: Back-off between restarts of a failing model process.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
#: A model process that served this long resets the back-off.
STABLE_S = 300.0
#: Signals that mean the runtime crashed (the probe's list: others are kills from outside).
CRASH_SIGNALS = frozenset(getattr(signal, name) for name in CRASHES)


def _info(d: dict) -> TensorInfo:
    return TensorInfo(str(d["name"]), tuple(None if x is None else int(x) for x in d["shape"]),
                      str(d["dtype"]), float(d["scale"]), int(d["zero_point"]),
                      tuple(str(a) for a in d["aliases"]))


def _exit_text(code: int | None) -> str:
    """How a process ended, for a person: ``killed by SIGSEGV (the runtime crashed)``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        crash = " (the runtime crashed)" if -code in CRASH_SIGNALS else ""
        return f"killed by {name}{crash}"
    return f"exited with status {code}"


def _child_env() -> dict[str, str]:
    """This environment, with the folder that holds the ``agent`` package first on the
    module path (so the model process finds the same code however the agent started)."""
    root = str(Path(__file__).resolve().parents[3])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _reap(proc: subprocess.Popen, control: socket.socket) -> None:
    """End a model process: closing its control channel ends it; a hung one is killed."""
    with contextlib.suppress(OSError):
        control.close()
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)


@dataclass(frozen=True)
class ModelFile:
    """A model that is not a detector card: an ONNX file checked by its own card
    (``card_path``; the dimming model), run with onnxruntime."""

    card_path: Path
    file: Path
    sha256: str
    backend: str = "onnxruntime"


@dataclass(eq=False)
class LoadedModel:
    """One model in a :class:`ModelHost`: what it is, its tensors, and its place in the
    running process (loaded again, in order, after each restart)."""

    card: ModelCard | ModelFile
    threads: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    index: int = -1
    lanes: weakref.WeakSet = field(default_factory=weakref.WeakSet)

    @property
    def key(self) -> tuple:
        """What identifies the model (see :func:`~agent.vision.detect.runtime.card_key`)."""
        return card_key(self.card, self.threads)  # type: ignore[arg-type]


class ModelHost:
    """One model process and the models loaded in it (see the module docstring);
    thread-safe. Starting it raises ModelError when no process can be started at all."""

    def __init__(self, name: str = "model process", *,
                 load_deadline_s: float = LOAD_DEADLINE_S,
                 first_load_deadline_s: float = FIRST_LOAD_DEADLINE_S,
                 backoff_min_s: float = BACKOFF_MIN_S, backoff_max_s: float = BACKOFF_MAX_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.load_deadline_s = load_deadline_s
        self.first_load_deadline_s = first_load_deadline_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._now = monotonic
        self._lock = threading.Lock()
        self._restarting: threading.Thread | None = None
        self.proc: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._finalizer: weakref.finalize | None = None
        self.models: list[LoadedModel] = []
        #: counts every start; a lane opened on an older one opens anew
        self.generation = 0
        #: why the model process is down ("" while it runs)
        self.down_reason = ""
        self.retry_at = 0.0
        self.backoff_s = backoff_min_s
        self.up_since = 0.0
        #: failures (crashes and hangs) and restarts since this host was made
        self.failures = 0
        self.restarts = 0
        try:
            self._spawn(first_load_deadline_s)
        except _StartFailed as e:
            raise ModelError(f"{name}: {e}") from None

    # -- the process ----------------------------------------------------------------------
    def _spawn(self, deadline_s: float) -> None:
        """Start the process and wait for its hello (lock held, or construction);
        _StartFailed when it did not say hello."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.vision.detect.host", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True, env=_child_env())
        except OSError as e:
            parent.close()
            raise _StartFailed(f"could not start ({e})") from None
        finally:
            child.close()
        self.proc, self._control = proc, parent
        self._finalizer = weakref.finalize(self, _reap, proc, parent)
        hello = self._ask(deadline_s, None)
        if not hello.get("ok"):
            self._stop_process()
            raise _StartFailed(f"said {hello!r:.80} instead of hello")
        self.generation += 1
        self.up_since = self._now()
        self.down_reason = ""

    def _ask(self, deadline_s: float, msg: dict | None) -> dict:
        """Send ``msg`` (None: nothing) on the control channel and wait for the answer
        (lock held); _StartFailed, the process stopped, when none comes."""
        assert self._control is not None
        control = self._control
        control.settimeout(deadline_s)
        try:
            if msg is not None:
                send(control, msg)
            reply, fds = receive(control)
            for fd in fds:
                os.close(fd)
        except TimeoutError:
            end = self._stop_process()
            raise _StartFailed(f"hung (no answer within {deadline_s:g} s while loading"
                               f"{': ' + end if end else ''})") from None
        except (OSError, ValueError) as e:
            reply = None
            why = f"{type(e).__name__}: {e}"
        else:
            why = ""
        if reply is None:
            end = self._stop_process()
            crash = ": a corrupt model, or a runtime that crashes on it" \
                if "the runtime crashed" in end else ""
            raise _StartFailed(f"{end or why or 'ended'} while loading{crash}")
        return reply

    def _load(self, m: LoadedModel, deadline_s: float) -> dict:
        """Load ``m`` in the running process (lock held): its answer."""
        card = m.card
        reply = self._ask(deadline_s, {
            "op": "load", "backend": card.backend, "file": str(card.file),
            "sha256": getattr(card, "sha256", "") or "-", "threads": m.threads,
            "card": str(card.card_path)})
        if reply.get("ok"):
            try:
                m.inputs = [_info(d) for d in reply["inputs"]]
                m.outputs = [_info(d) for d in reply["outputs"]]
                m.index = int(reply["model"])
            except (KeyError, TypeError, ValueError) as e:
                self._stop_process()
                raise _StartFailed(f"sent a malformed answer ({type(e).__name__}: {e})"
                                   ) from None
        return reply

    def _restart(self, deadline_s: float | None = None) -> None:
        """Start the process again and load its models again (lock held); on failure the
        process is down (back-off) and RuntimeUnavailable is raised."""
        deadline_s = self.load_deadline_s if deadline_s is None else deadline_s
        self.restarts += 1
        log.warning("%s: restarting (restart %d)", self.name, self.restarts)
        try:
            self._spawn(deadline_s)
            for m in self.models:
                before = (m.inputs, m.outputs)
                reply = self._load(m, deadline_s)
                if not reply.get("ok"):
                    self._stop_process()
                    raise _StartFailed(f"could not load {m.card.card_path} again "
                                       f"({reply.get('error', '')})")
                if (m.inputs, m.outputs) != before:
                    self._stop_process()    # the file changed under its card
                    raise _StartFailed(f"{m.card.card_path}: loaded a model with other "
                                       f"tensors than before")
        except _StartFailed as e:
            self._down(f"{e}")
            raise RuntimeUnavailable(self.down_reason, self.retry_at - self._now()) from None

    def load(self, card: ModelCard | ModelFile, threads: int = 1) -> LoadedModel:
        """Load a model in this process, starting the process (again) first if it is down,
        back-off or not: a load is asked for once, and no lane may exist yet to start it.
        ModelError when it cannot be loaded: the model's own error, the process not
        starting, or the process dying or hanging while loading it twice running (once
        may be a kill from outside; the other models are loaded again each time)."""
        with self._lock:
            m = LoadedModel(card, int(threads), [], [])
            for attempt in (1, 2):
                if self.proc is None:
                    try:
                        self._restart(self.first_load_deadline_s)
                    except RuntimeUnavailable as e:
                        raise ModelError(f"{card.card_path}: {e}") from None
                try:
                    reply = self._load(m, self.first_load_deadline_s)
                    break
                except _StartFailed as e:       # it took the process down
                    self._down(f"{e}")
                    if attempt == 2:
                        raise ModelError(f"{card.card_path}: {card.file}: {e} (twice); "
                                         f"not opened") from None
            if not reply.get("ok"):
                error = str(reply.get("error", ""))
                raise ModelError(error if error.startswith(str(card.card_path))
                                 else f"{card.card_path}: {error}")
            self.models.append(m)
            return m

    def _down(self, why: str) -> None:
        now = self._now()
        if self.up_since and now - self.up_since >= STABLE_S:
            self.backoff_s = self.backoff_min_s
        self.up_since = 0.0
        self.failures += 1
        self.retry_at = now + self.backoff_s
        self.down_reason = f"{self.name} {why}; restart in {self.backoff_s:g} s"
        self.backoff_s = min(self.backoff_max_s, 2 * self.backoff_s)
        log.error("%s", self.down_reason)

    def _stop_process(self) -> str:
        """Kill the process (lock held); what its end was."""
        proc, control, fin = self.proc, self._control, self._finalizer
        self.proc = self._control = self._finalizer = None
        if fin is not None:
            fin.detach()
        if proc is None:
            return ""
        with contextlib.suppress(OSError):
            if control is not None:
                control.close()
        code = proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=0.2)     # a crash being reaped
        if code is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            return "killed"
        return _exit_text(code)

    def fail(self, generation: int, why: str, background: bool = False
             ) -> RuntimeUnavailable:
        """A lane of ``generation`` found the process dead or hung: stop it (once for all
        its lanes) and schedule the restart. Returns the error the lane raises.
        ``background`` (the lamp path): never wait for the lock; whoever holds it (a restart,
        a load with its own deadline) deals with the process."""
        if not self._lock.acquire(timeout=0.05 if background else -1):
            return RuntimeUnavailable(f"{self.name} {why}; being restarted",
                                      self.backoff_min_s)
        try:
            if generation == self.generation and self.proc is not None:
                end = self._stop_process()
                self._down(f"{why}: {end}" if end else why)
            return RuntimeUnavailable(self.down_reason or why,
                                      max(0.0, self.retry_at - self._now()))
        finally:
            self._lock.release()

    def open_lane(self, model: LoadedModel, background: bool = False
                  ) -> tuple[socket.socket, int]:
        """A new lane to ``model`` in the running process, restarting the process when its
        back-off is over; RuntimeUnavailable while it is down. ``background``: never wait
        for a start (the lamp path): the restart runs on a thread of its own, and a caller
        that finds it under way is told so at once."""
        if not self._lock.acquire(timeout=0.05 if background else -1):
            raise RuntimeUnavailable(f"{self.name} restarting", self.backoff_min_s)
        try:
            if self.proc is None:
                now = self._now()
                if now < self.retry_at:
                    raise RuntimeUnavailable(self.down_reason, self.retry_at - now)
                if background:
                    self._restart_in_background()
                    raise RuntimeUnavailable(f"{self.name} restarting", self.backoff_min_s)
                self._restart()
            if model not in self.models:
                raise RuntimeUnavailable(f"{self.name}: the model was unloaded", 0.0)
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            gen, why = self.generation, ""
            try:
                assert self._control is not None
                send(self._control, {"op": "lane", "model": model.index}, [theirs.fileno()])
            except OSError as e:
                mine.close()
                why = f"control channel failed ({e})"
            finally:
                theirs.close()
            if not why:
                return mine, gen
        finally:
            self._lock.release()
        raise self.fail(gen, why)

    def _restart_in_background(self) -> None:
        if self._restarting is not None and self._restarting.is_alive():
            return

        def restart() -> None:
            with self._lock:
                if self.proc is None and self._now() >= self.retry_at:
                    with contextlib.suppress(RuntimeUnavailable):
                        self._restart()

        self._restarting = threading.Thread(target=restart, daemon=True,
                                            name="model-restart")
        self._restarting.start()

    def prune(self) -> int:
        """Forget the models no lane uses any more (a reload dropped their cameras) and,
        if there were any, start the process again without them, so their memory is
        freed; the other cameras' lanes open again on the new process. Returns how many."""
        with self._lock:
            unused = [m for m in self.models if not len(m.lanes)]
            if not unused:
                return 0
            self.models = [m for m in self.models if len(m.lanes)]
            log.info("%s: %d model(s) unused, starting it again without them", self.name,
                     len(unused))
            self._stop_process()
            if self.models:
                with contextlib.suppress(RuntimeUnavailable):
                    self._restart()
            return len(unused)

    @property
    def up(self) -> bool:
        """True while the model process runs."""
        return self.proc is not None

    def close(self) -> None:
        """End the model process."""
        with self._lock:
            self._stop_process()
            self.retry_at = float("inf")
            self.down_reason = f"{self.name} closed"


class _StartFailed(Exception):
    """The model process did not start, or died or hung while loading (the reason)."""


class IsolatedRuntime:
    """One camera's lane to a :class:`ModelHost`: the :class:`~agent.vision.detect.runtime.
    Runtime` interface, its calls served by the model process."""

    def __init__(self, host: ModelHost, model: LoadedModel,
                 run_deadline_s: float = RUN_DEADLINE_S, background: bool = False) -> None:
        self.host = host
        self.model = model
        #: seconds one run may take before the process is taken for hung
        self.run_deadline_s = float(run_deadline_s)
        #: never wait for the process to start again (the lamp path)
        self.background = background
        model.lanes.add(self)
        self.inputs = model.inputs
        self.outputs = model.outputs
        self._bound = [0] if self.outputs else []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._generation = 0
        self._memfd = -1
        self._mem: mmap.mmap | None = None
        self._send_mem = False
        sizes = [int(np.prod(o.shape)) * 4 for o in self.outputs
                 if all(d is not None for d in o.shape)]
        self._out_bytes = sum(align(n) for n in sizes) if len(sizes) == len(self.outputs) \
            else 1 << 20
        self._finalizer = weakref.finalize(self, IsolatedRuntime._release, [self._parts()])

    def _parts(self) -> tuple:
        return (self._sock, self._mem, self._memfd)

    @staticmethod
    def _release(parts: list[tuple]) -> None:
        sock, mem, fd = parts[0]
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if mem is not None:
            with contextlib.suppress(BufferError):
                mem.close()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _track(self) -> None:
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, IsolatedRuntime._release, [self._parts()])

    def bind(self, names: list[str]) -> None:
        """Choose the outputs :meth:`run` returns, in this order (names or aliases)."""
        idx = [find_output(self.outputs, n) for n in names]
        if min(idx, default=0) < 0:
            raise ModelError(f"no output named {names[idx.index(-1)]!r}")
        self._bound = idx

    def close(self) -> None:
        """Close this lane (the model process serves the other cameras on)."""
        with self._lock:
            self._finalizer()

    def _grow(self, size: int) -> None:
        fd = os.memfd_create("polelink-model-lane", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mem = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        old_mem, old_fd = self._mem, self._memfd
        self._mem, self._memfd, self._send_mem = mem, fd, True
        if old_mem is not None:
            with contextlib.suppress(BufferError):
                old_mem.close()
        if old_fd >= 0:
            os.close(old_fd)
        self._track()

    def _channel(self) -> socket.socket:
        host = self.host
        if self._sock is None or self._generation != host.generation or not host.up:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None
            sock, gen = host.open_lane(self.model, self.background)
            sock.settimeout(self.run_deadline_s)
            self._sock, self._generation, self._send_mem = sock, gen, True
            self._track()
        return self._sock

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model in the model process; the bound outputs as float32 arrays.
        RuntimeUnavailable when the process is down, crashed or hung (see the module
        docstring); ModelError when the runtime refused the input."""
        tensor = np.ascontiguousarray(tensor)
        with self._lock:
            for _ in range(2):               # a second time only after growing the memory
                need = align(tensor.nbytes) + self._out_bytes
                try:
                    if self._mem is None or len(self._mem) < need:
                        self._grow(need)
                    sock = self._channel()
                except OSError as e:    # out of file descriptors or memory: try again
                    raise RuntimeUnavailable(f"cannot open a lane to the {self.host.name}: "
                                             f"{e.strerror or e}", 1.0) from None
                assert self._mem is not None
                np.frombuffer(self._mem, tensor.dtype, tensor.size)[:] = tensor.ravel()
                reply = self._ask(sock, {"op": "run", "shape": list(tensor.shape),
                                         "dtype": tensor.dtype.name, "outputs": self._bound})
                if reply.get("ok"):
                    return self._outputs(reply)
                if "need" in reply:
                    need = reply["need"]
                    if type(need) is not int or not need <= MAX_LANE_BYTES:
                        raise self._malformed(f"asked for {need!r} bytes of shared memory")
                    self._out_bytes = need - align(tensor.nbytes)
                    continue
                raise ModelError(f"{self.model.card.card_path}: the model failed to run in "
                                 f"the model process: {reply.get('error', '')}")
        raise ModelError(f"{self.model.card.card_path}: the model's outputs do not fit "
                         f"{self._out_bytes} bytes")

    def _outputs(self, reply: dict) -> list[np.ndarray]:
        """The outputs a reply places in the shared memory, copied out (checked: a reply
        that does not fit is the model process's fault, never a crash here)."""
        mem = self._mem
        assert mem is not None
        places = reply.get("outputs")
        if not isinstance(places, list) or len(places) != len(self._bound):
            raise self._malformed("answered the wrong number of outputs")
        out = []
        for place in places:
            if not (isinstance(place, list) and len(place) == 2 and type(place[0]) is int
                    and isinstance(place[1], list)
                    and all(type(d) is int and d >= 0 for d in place[1])):
                raise self._malformed(f"placed an output as {place!r:.80}")
            off, shape = place
            n = math.prod(shape)            # Python's integers: no overflow
            if off < 0 or off + 4 * n > len(mem):
                raise self._malformed("placed an output outside its shared memory")
            out.append(np.frombuffer(mem, np.float32, n, off).reshape(shape).copy())
        return out

    def _malformed(self, what: str) -> RuntimeUnavailable:
        self._drop()
        return self.host.fail(self._generation, f"sent a malformed answer ({what})",
                              self.background)

    def _ask(self, sock: socket.socket, msg: dict) -> dict:
        gen = self._generation
        try:
            send(sock, msg, [self._memfd] if self._send_mem else None)
            self._send_mem = False
            reply, fds = receive(sock)
        except TimeoutError:
            self._drop()
            raise self.host.fail(gen, f"hung (no answer within {self.run_deadline_s:g} s)",
                                 self.background) from None
        except (ConnectionError, EOFError):
            self._drop()
            raise self.host.fail(gen, "ended", self.background) from None
        except (OSError, ValueError) as e:
            self._drop()
            raise self.host.fail(gen, f"lane failed ({type(e).__name__}: {e})",
                                 self.background) from None
        for fd in fds:
            os.close(fd)
        if reply is None:
            self._drop()
            raise self.host.fail(gen, "ended", self.background) from None
        return reply

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._track()


class ModelHosts:
    """The model processes of one agent: **one** for every onnxruntime model (the cameras'
    models, a session per card shared by the cameras that use it, and the dimming model;
    :data:`~agent.vision.detect.runtime.SHAREABLE`), so that a pole pays for one more
    Python and one onnxruntime, not one per model; and one per camera for TFLite (an
    interpreter serialises its callers). A crash or hang in the shared process stops all
    its models for the back-off; each is reported by what uses it (cameras ``model_down``,
    the dimming model's steps at the safe level)."""

    def __init__(self, **host_options: float) -> None:
        self.options = host_options
        self._lock = threading.Lock()
        self._shared: ModelHost | None = None
        self._solo: weakref.WeakSet = weakref.WeakSet()

    def _shared_host(self) -> ModelHost:
        if self._shared is None:
            self._shared = ModelHost("model process", **self.options)  # type: ignore[arg-type]
        return self._shared

    def get(self, card: ModelCard | ModelFile, threads: int = 1,
            run_timeout_s: float | None = None, background: bool = False
            ) -> IsolatedRuntime:
        """A lane to ``card``'s model in its process (loaded on first use: ModelError when
        it cannot be); ``run_timeout_s``: see :data:`RUN_DEADLINE_S`; ``background``: see
        :meth:`ModelHost.open_lane`."""
        deadline = RUN_DEADLINE_S if run_timeout_s is None else float(run_timeout_s)
        with self._lock:
            if card.backend in SHAREABLE:
                host = self._shared_host()
                key = card_key(card, threads)  # type: ignore[arg-type]
                model = next((m for m in host.models if m.key == key), None) \
                    or host.load(card, threads)
            else:
                host = ModelHost(f"model process ({Path(card.file).name})",
                                 **self.options)  # type: ignore[arg-type]
                model = host.load(card, threads)
                self._solo.add(host)
            return IsolatedRuntime(host, model, deadline, background)

    def hosts(self) -> list[ModelHost]:
        """The model processes in use."""
        return ([self._shared] if self._shared is not None else []) + list(self._solo)

    def prune(self) -> int:
        """Unload the models no camera uses any more (see :meth:`ModelHost.prune`)."""
        return self._shared.prune() if self._shared is not None else 0

    def close(self) -> None:
        """End every model process."""
        for h in self.hosts():
            h.close()

    def __len__(self) -> int:
        return len(self.hosts())
