"""The add-on's side of the engine: the protocol client, and a local engine process it can start.

Plain Python (no bpy). The protocol package is vendored into the built extension by `build.py`;
run as `videograin.blender_addon` (an installed or editable videograin), its sibling
`videograin.protocol` is used.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
import time
from pathlib import Path

try:  # inside the built extension
    from .protocol.client import EngineClient, EngineError, frame_image
except ImportError:  # as videograin.blender_addon, beside videograin.protocol
    from ..protocol.client import EngineClient, EngineError, frame_image

__all__ = ["EngineClient", "EngineError", "LocalEngine", "connect", "frame_image"]


def connect(connection_file: str, timeout_s: float = 5.0) -> EngineClient:
    """A client that has said hello, or EngineError with a message a user can act on."""
    if not connection_file:
        raise EngineError("no_engine", "No engine configured: start a local engine or choose a connection file.")
    try:
        client = EngineClient(connection_file)
    except EngineError:
        raise EngineError(
            "no_engine", f"No engine is running for '{connection_file}': start one with 'Start Engine' "
            "or run `videograin serve` and choose its connection file."
        ) from None
    try:
        client.hello(client="videograin-blender", timeout_s=timeout_s)
    except EngineError as exc:
        client.close()
        if exc.code == "no_engine":
            raise EngineError("no_engine", f"The engine at {client.address} does not answer: is it still running?") from None
        raise
    return client


class LocalEngine:
    """`<python> -m videograin serve ...` as a child process, found again through its connection file."""

    def __init__(self, python: str, extra_args: str = "") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="videograin-engine-"))
        self.connection_file = self.folder / "engine.json"
        self.log_path = self.folder / "engine.log"
        command = [python, "-m", "videograin", "serve", "--connection-file", str(self.connection_file), *shlex.split(extra_args)]
        self._log = open(self.log_path, "w")
        try:
            self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self._log.close()
            raise EngineError("no_engine", f"Cannot start the engine with '{python}': {exc}") from None

    def ready(self) -> bool:
        """True once the engine listens; EngineError if it exited (with the end of its log)."""
        if self.connection_file.exists():
            return True
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-600:]
            raise EngineError("no_engine", f"The engine exited with code {self.process.returncode}: {tail}")
        return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError("no_engine", f"The engine did not start within {timeout_s:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()
