"""The add-on's side of the engine: the protocol client, a watch on whether the engine answers, and a
local engine process it can start.

Plain Python (no bpy). The protocol package is vendored into the built extension by `build.py`;
run as `videograin.blender_addon` (an installed or editable videograin), its sibling
`videograin.protocol` is used.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:  # inside the built extension
    from .protocol.client import EngineClient, EngineError, frame_image
    from .protocol.wire import ProtocolError, read_connection_file
except ModuleNotFoundError as missing:
    if missing.name != f"{__package__}.protocol":  # the bundled client is there but cannot load (no pyzmq...)
        raise
    # as videograin.blender_addon, beside videograin.protocol
    from ..protocol.client import EngineClient, EngineError, frame_image
    from ..protocol.wire import ProtocolError, read_connection_file

__all__ = ["EngineClient", "EngineError", "EngineWatch", "LocalEngine", "connect", "frame_image", "shares_disk"]

KEEP_LOGS = 5


def connect(connection_file: str, timeout_s: float = 5.0) -> EngineClient:
    """A client that has said hello, or EngineError with a message a user can act on."""
    if not connection_file:
        raise EngineError("no_engine", "No engine configured: start a local engine or choose a connection file.")
    try:
        client = EngineClient(connection_file)
    except EngineError as exc:  # its message says why (no file, a stale one left by a killed engine...)
        raise EngineError(
            "no_engine", f"No engine is running for '{connection_file}' ({exc.message}): start one with "
            "'Start Engine' or run `videograin serve` and choose its connection file."
        ) from None
    try:
        client.hello(client="videograin-blender", timeout_s=timeout_s)
    except EngineError as exc:
        client.close()
        if exc.code == "no_engine":
            raise EngineError("no_engine", f"The engine at {client.address} does not answer: is it still running?") from None
        raise
    return client


def shares_disk(address: str) -> bool:
    """Whether an engine at `address` runs on this machine and so can read our files by path.

    ipc:// is a local socket file; tcp:// to a loopback address is this machine, which is where
    `videograin serve` binds unless told `--allow-remote`. A loopback port forwarded to another machine
    (an SSH tunnel, a container) looks the same: the operator then retries inline when the engine
    cannot read the paths.
    """
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        return True
    if parts.scheme != "tcp" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


CONNECTING, ALIVE, SILENT, ABSENT = "connecting", "alive", "silent", "absent"


class EngineWatch:
    """Whether the engine behind a connection file answers, found out on a background thread with the
    protocol's own heartbeat (a `ping` every heartbeat_s): the UI reads `state` and never waits on the
    network. The thread owns its client; the main thread only reads plain attributes."""

    def __init__(self, connection_file: str, timeout_s: float = 5.0, retry_s: float = 2.0) -> None:
        self.connection_file = connection_file
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.state, self.address, self._problem = CONNECTING, "", ""
        self.capabilities: dict[str, Any] | None = None
        self.last_heard: float | None = None  # time.monotonic() of the engine's last answer
        self.ping_s: float | None = None
        self._stop, self._checked = threading.Event(), threading.Event()
        self._read_file()  # local and instant: a missing file is known before this returns
        threading.Thread(target=self._run, name="videograin-engine-watch", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.state == ALIVE

    @property
    def message(self) -> str:
        if self.state == ALIVE:
            caps = self.capabilities or {}
            return f"Engine {caps.get('version', '?')} on {caps.get('device', '?')}, model {(caps.get('models') or ['?'])[0]}"
        if self.state == CONNECTING:
            return f"Waiting for the engine at {self.address} to answer; try again in a moment."
        if self.state == SILENT and self.last_heard is not None:
            return (f"The engine at {self.address} does not answer (last heard {time.monotonic() - self.last_heard:.0f} s "
                    "ago): is it still running?")
        return self._problem

    def wait(self, timeout_s: float) -> bool:
        """Block until the first check has an answer (for scripts); False if it has none yet."""
        return self._checked.wait(timeout_s)

    def close(self) -> None:
        """Stop watching; the thread ends after its current check."""
        self._stop.set()

    def _read_file(self) -> bool:
        if not self.connection_file:
            self._settle(ABSENT, "No engine configured: start a local engine or choose a connection file.")
            return False
        try:
            self.address = read_connection_file(self.connection_file)["address"]
        except ProtocolError:
            self._settle(ABSENT, f"No engine is running for '{self.connection_file}': start one with 'Start Engine' "
                                 "or run `videograin serve` and choose its connection file.")
            return False
        return True

    def _settle(self, state: str, problem: str = "") -> None:
        self.state, self._problem = state, problem
        self._checked.set()

    def _run(self) -> None:
        client: EngineClient | None = None
        try:
            while not self._stop.is_set():
                if client is None:
                    # (Re)read the file each time: a restarted engine writes a new address and key.
                    if self._read_file():
                        try:
                            client = connect(self.connection_file, self.timeout_s)
                            self.capabilities, self.last_heard = client.capabilities, time.monotonic()
                            self._settle(ALIVE)
                        except EngineError as exc:
                            self._settle(SILENT, exc.message)
                    self._stop.wait(client.heartbeat_s if client else self.retry_s)
                    continue
                try:
                    self.ping_s = client.ping(timeout_s=client.heartbeat_s)
                    self.last_heard = time.monotonic()
                    self._settle(ALIVE)
                except EngineError:
                    client.close()
                    client = None
                    self._settle(SILENT, f"The engine at {self.address} does not answer: is it still running?")
                    continue
                self._stop.wait(client.heartbeat_s)
        finally:
            if client is not None:
                client.close()


class LocalEngine:
    """`<python> -m videograin serve ...` as a child process. Its connection file and its log live in
    `folder`, one known place; the newest KEEP_LOGS logs are kept, older ones are removed."""

    def __init__(self, python: str, extra_args: str, folder: Path) -> None:
        logs = folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.connection_file = folder / f"engine-{os.getpid()}.json"  # one per Blender process
        self.connection_file.unlink(missing_ok=True)  # left by an engine that was killed: not this one
        self.log_path = logs / f"engine-{datetime.now():%Y%m%d-%H%M%S-%f}.log"  # names sort by start time
        command = [python, "-m", "videograin", "serve", "--connection-file", str(self.connection_file), *shlex.split(extra_args)]
        self._log = open(self.log_path, "w")
        try:
            self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self._log.close()
            self.log_path.unlink(missing_ok=True)
            raise EngineError("no_engine", f"Cannot start the engine with '{python}': {exc}") from None
        for old in sorted(logs.glob("engine-*.log"))[:-KEEP_LOGS]:
            old.unlink(missing_ok=True)

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
                self.process.wait()
        self._log.close()
