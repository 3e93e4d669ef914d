"""The model process: model files loaded and run here, apart from the lamps' process.

``python -m agent.vision.detect.host FD`` with file descriptor ``FD`` a Unix
``SOCK_SEQPACKET`` socket (the control channel). Started by
:class:`agent.vision.detect.isolated.ModelHost`; see that module for why and for the
protocol. This side:

- says ``hello`` on the control channel, then loads each model it is asked to
  (``load``: its file's sha256 checked, then its runtime opened; the answer is the model's
  tensors, or the one-line error, and a model that fails to load leaves the others
  running);
- takes *lanes* on the control channel (a socket passed as a file descriptor, one per
  camera and model), and serves each on a thread of its own: a ``run`` request names the
  input's shape and dtype, which the lane's shared memory (a memfd, passed with the first
  request and whenever it grows) holds at offset 0; the outputs are written after it and
  their places answered. Onnxruntime runs the lanes in parallel; TFLite serialises them;
- exits when the control channel closes (the agent stopped, or died: nothing is left
  running), and ignores the terminal's and the service manager's stop signals, which are
  the agent's to act on.

Every message is one JSON object (at most :data:`MAX_MESSAGE` bytes).
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import sys
import threading
from typing import Any

try:
    import numpy as np
except ImportError as _e:               # a release half installed (or half replaced)
    print(f"model process: cannot start: {_e}", file=sys.stderr)
    os._exit(1)

#: The largest control or lane message, in bytes (both sides).
MAX_MESSAGE = 65536
#: Output arrays start at multiples of this in a lane's shared memory.
ALIGN = 64


def align(n: int) -> int:
    """``n`` rounded up to :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    """One message (and file descriptors) on a SEQPACKET socket."""
    data = json.dumps(msg, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the file descriptors that came with it; ``(None, [])`` at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("a message is not a JSON object")
    return msg, list(fds)


def tensor_info(t: Any) -> dict[str, Any]:
    """A :class:`~agent.vision.detect.runtime.TensorInfo` as JSON."""
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "scale": t.scale,
            "zero_point": t.zero_point, "aliases": list(t.aliases)}


class Lane:
    """One camera's channel: its socket and its shared memory."""

    def __init__(self, sock: socket.socket, runtime: Any) -> None:
        self.sock = sock
        self.runtime = runtime
        self.mem: mmap.mmap | None = None

    def serve(self) -> None:
        """Answer requests until the socket closes."""
        try:
            while True:
                msg, fds = receive(self.sock)
                if msg is None:
                    return
                if fds:
                    self._attach(fds)
                send(self.sock, self._answer(msg))
        except (OSError, ValueError):   # the agent closed it, or sent what no agent sends:
            return                      # the lane ends (the agent sees it end)
        finally:
            self.sock.close()

    def _attach(self, fds: list[int]) -> None:
        for fd in fds[1:]:
            os.close(fd)
        try:
            size = os.fstat(fds[0]).st_size
            mem = mmap.mmap(fds[0], size)
        finally:
            os.close(fds[0])
        if self.mem is not None:
            self.mem.close()
        self.mem = mem

    def _answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("op") != "run" or self.mem is None:
            return {"ok": False, "error": f"unexpected request {msg.get('op')!r}"}
        try:
            shape = [int(d) for d in msg["shape"]]
            dtype = np.dtype(str(msg["dtype"]))
            idx = [int(i) for i in msg["outputs"]]
            count = int(np.prod(shape))
            if count * dtype.itemsize > len(self.mem):
                return {"ok": False, "error": "the input does not fit the shared memory"}
            x = np.frombuffer(self.mem, dtype, count).reshape(shape)
            outs = self.runtime.run_indices(x, idx)
        except Exception as e:  # the runtime's own errors: one line back to the agent
            text = (str(e).strip().splitlines() or [""])[0]
            return {"ok": False, "error": f"{type(e).__name__}: {text}"}
        off = align(count * dtype.itemsize)
        places = []
        for a in outs:
            places.append([off, list(a.shape)])
            off = align(off + 4 * a.size)
        if off > len(self.mem):
            return {"ok": False, "need": off}
        for (o, _shape), a in zip(places, outs, strict=True):
            np.frombuffer(self.mem, np.float32, a.size, o)[:] = a.ravel()   # one copy
        return {"ok": True, "outputs": places}


def load(backend: str, path: str, sha256: str, threads: int, card_path: str) -> Any:
    """The runtime for a model file, opened here: the file's sha256 checked first (the
    agent checked the card; a file replaced since is refused), then the card's backend
    (``onnxruntime`` or ``tflite``; the TFLite probe is this process already). Neither
    OpenCV nor the card's schema is imported: this process holds a model and nothing else."""
    import hashlib
    from types import SimpleNamespace

    from agent.settings.modelerror import ModelError
    from agent.vision.detect import probe
    from agent.vision.detect.runtime import RUNTIMES

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise ModelError(f"{card_path}: model file {path}: {e.strerror or e}") from None
    if sha256 != "-" and h.hexdigest() != sha256:
        raise ModelError(f"{card_path}: model file {path} has sha256 {h.hexdigest()}, the card "
                         f"says {sha256}: wrong or corrupt file")
    if backend not in RUNTIMES:
        raise ModelError(f"{card_path}: no runtime {backend!r}")
    probe.ENABLED = False
    return RUNTIMES[backend](SimpleNamespace(file=path, card_path=card_path),  # type: ignore[arg-type]
                             threads)


def main(argv: list[str] | None = None) -> int:
    """Serve models until the control channel closes."""
    args = sys.argv[1:] if argv is None else argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    control = socket.socket(fileno=int(args[0]))
    models: list[Any] = []
    try:
        send(control, {"ok": True, "pid": os.getpid()})
        while True:
            if not serve_control(control, models):
                return 0
    except (OSError, ValueError):       # the agent is gone, or spoke garbage: so are we
        return 0


def serve_control(control: socket.socket, models: list[Any]) -> bool:
    """One control message (a load or a lane); False once the channel is closed."""
    msg, fds = receive(control)
    if msg is None:
        return False                    # the agent is gone: so is this process
    op = msg.get("op")
    if op == "load":
        try:
            rt = load(str(msg["backend"]), str(msg["file"]), str(msg["sha256"]),
                      int(msg["threads"]), str(msg["card"]))
        except Exception as e:  # a model error: said once; the other models go on
            text = (str(e).strip().splitlines() or [""])[0]
            send(control, {"ok": False, "error": text if type(e).__name__ == "ModelError"
                           else f"{type(e).__name__}: {text}"})
            return True
        models.append(rt)
        send(control, {"ok": True, "model": len(models) - 1,
                       "inputs": [tensor_info(t) for t in rt.inputs],
                       "outputs": [tensor_info(t) for t in rt.outputs]})
    elif op == "lane" and fds and isinstance(msg.get("model"), int) \
            and 0 <= msg["model"] < len(models):
        for fd in fds[1:]:
            os.close(fd)
        lane = Lane(socket.socket(fileno=fds[0]), models[msg["model"]])
        threading.Thread(target=lane.serve, daemon=True, name="lane").start()
    else:
        for fd in fds:
            os.close(fd)
    return True


if __name__ == "__main__":
    os._exit(main())                    # no interpreter teardown under lane threads
