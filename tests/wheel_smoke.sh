#!/usr/bin/env bash
# The wheel, away from the source tree (a CI step of its own, run by .ci/run after the test suite).
# Builds the wheel, installs it with the local CPU torch into a fresh venv, and from an empty folder runs
# the demo, starts `videograin serve` and says hello to it with the installed reference client.
# Kept quick on purpose: the demo is 2 frames of 64x64 for 2 steps on the tiny model (seconds); the
# install comes from pip's cache and the local torch, without byte-compiling (about a minute when warm).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$root/.venv/bin/pip" wheel -q --no-deps --wheel-dir "$work/dist" "$root"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-compile torch==2.13.0 "$work"/dist/videograin-*.whl -c "$root/constraints.txt"

mkdir "$work/empty"
cd "$work/empty"
export HF_HUB_OFFLINE=1
"$work/venv/bin/videograin" demo --out demo --frames 2 --size 64 --steps 2 --device cpu
test -s demo/result/result.json

"$work/venv/bin/python" - <<'EOF'
import subprocess
import sys
import time
from pathlib import Path

import videograin
from videograin.protocol.client import EngineClient

assert "site-packages" in videograin.__file__, f"imported from the source tree: {videograin.__file__}"
serve = [Path(sys.executable).with_name("videograin"), "serve", "--model", "tiny", "--device", "cpu",
         "--connection-file", "engine.json"]
engine = subprocess.Popen(serve)
try:
    deadline = time.monotonic() + 120
    while not Path("engine.json").exists():
        assert engine.poll() is None and time.monotonic() < deadline, "videograin serve did not start"
        time.sleep(0.2)
    client = EngineClient("engine.json")
    assert client.hello()["version"] == videograin.__version__
    client.shutdown()
    client.close()
    assert engine.wait(timeout=60) == 0, engine.returncode
finally:
    engine.kill()
print(f"wheel smoke test passed: videograin {videograin.__version__} from {Path(videograin.__file__).parent}")
EOF
