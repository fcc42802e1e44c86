"""Build the installable Blender extension zip:

    python -m videograin.blender_addon.build --out dist/            # every platform
    python -m videograin.blender_addon.build --platform linux-x64   # one platform (smaller, faster)

It bundles the protocol client (vendored as `protocol/`) and pyzmq + msgpack wheels for Blender's
Pythons (3.11 for 4.2–5.0, 3.13 for 5.1+), and writes the wheels into the manifest. numpy ships with
Blender; torch never goes in: the engine is a separate process.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ADDON = Path(__file__).resolve().parent
ROOT = ADDON.parent
WHEELS = {"pyzmq": "27.3.0", "msgpack": "1.2.4"}
PYTHONS = ("3.11", "3.13")
PLATFORM_TAGS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_26_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "linux-arm64": ["manylinux_2_28_aarch64", "manylinux_2_26_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"],
    "macos-x64": ["macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2", "macosx_10_9_universal2"],
}
ADDON_FILES = ("__init__.py", "engine_link.py", "jobspec.py", "session.py", "export.py", "timeline.py",
               "properties.py", "operators.py", "panel.py")
PROTOCOL_FILES = ("__init__.py", "wire.py", "client.py", "SPEC.md")


def download_wheels(platforms: list[str], folder: Path) -> list[Path]:
    for platform in platforms:
        for python in PYTHONS:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                       "--python-version", python, "--implementation", "cp", "--dest", str(folder)]
            for tag in PLATFORM_TAGS[platform]:
                command += ["--platform", tag]
            subprocess.run(command + [f"{name}=={version}" for name, version in WHEELS.items()], check=True)
    return sorted(folder.glob("*.whl"))


def manifest_text(wheels: list[Path], platforms: list[str]) -> str:
    text = (ADDON / "blender_manifest.toml").read_text()
    listed = ",\n".join(f'  "./wheels/{w.name}"' for w in wheels)
    text = re.sub(r"^wheels = \[\]$", f"wheels = [\n{listed},\n]", text, flags=re.M)
    return text.replace("[permissions]", f"platforms = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in platforms)}]\n\n[permissions]")


def build(out: Path, platforms: list[str], wheel_cache: Path | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    version = re.search(r'^version = "([^"]+)"', (ADDON / "blender_manifest.toml").read_text(), re.M).group(1)
    target = out / f"videograin-{version}.zip"
    with tempfile.TemporaryDirectory() as scratch:
        folder = wheel_cache or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        wheels = download_wheels(platforms, folder)
        tmp = target.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("blender_manifest.toml", manifest_text(wheels, platforms))
            for name in ADDON_FILES:
                archive.write(ADDON / name, name)
            for name in PROTOCOL_FILES:
                archive.write(ROOT / "protocol" / name, f"protocol/{name}")
            for wheel in wheels:
                archive.write(wheel, f"wheels/{wheel.name}")
        tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"))
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORM_TAGS), help="repeatable; default: all")
    parser.add_argument("--wheel-cache", help="keep downloaded wheels here between builds")
    args = parser.parse_args(argv)
    target = build(Path(args.out), args.platform or sorted(PLATFORM_TAGS), Path(args.wheel_cache) if args.wheel_cache else None)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
