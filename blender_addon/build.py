"""Build the Blender extension, one zip per platform, with Blender's own extension builder:

    python -m videograin.blender_addon.build --out dist/            # every platform
    python -m videograin.blender_addon.build --platform linux-x64   # one platform (faster)

(`python -m blender_addon.build` from the repository root does the same.) It stages a folder: the add-on's
modules and its licence (GPL-3.0-or-later), the protocol client vendored as `protocol/` (Apache-2.0, with
its licence), pyzmq + msgpack wheels for Blender's Pythons (3.11 for 4.2–5.0, 3.13 for 5.1+), and a
manifest listing the wheels, the platforms and pyproject.toml's version. Blender's builder
(`extension build --split-platforms`: the bpy wheel's copy, else `blender` on PATH) then writes
`videograin-VERSION-PLATFORM.zip`, each zip with its own platform's wheels only. numpy ships with Blender;
torch never goes in: the engine is a separate process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ADDON = Path(__file__).resolve().parent
ROOT = ADDON.parent
WHEELS = {"pyzmq": "27.3.0", "msgpack": "1.2.4"}
PYTHONS = ("3.11", "3.13")
# pip platform tags per Blender platform, most specific first (pip prefers earlier tags).
PLATFORM_TAGS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_26_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "linux-arm64": ["manylinux_2_28_aarch64", "manylinux_2_26_aarch64", "manylinux_2_17_aarch64",
                    "manylinux2014_aarch64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"],
    "macos-x64": ["macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2", "macosx_10_9_universal2"],
}
PROTOCOL_FILES = ("__init__.py", "wire.py", "client.py", "SPEC.md")


class BuildError(RuntimeError):
    """The extension cannot be built; the message says what to fix."""


class DownloadError(BuildError):
    """The package index could not be reached for the wheels the extension bundles."""


def extension_command(subcommand: str, *args: str) -> list[str]:
    """Blender's `extension` command line: the copy inside the installed bpy wheel, else `blender` on PATH."""
    spec = importlib.util.find_spec("bpy")  # finds the package without loading Blender
    if spec is not None and spec.submodule_search_locations:
        scripts = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts"))
        if scripts:
            # Blender itself checks tags against this list (extensions.blender.org's); do the same.
            tags = scripts[-1] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
            return [sys.executable, str(scripts[-1] / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"),
                    subcommand, *args, "--valid-tags", str(tags)]
    if blender := shutil.which("blender"):
        return [blender, "--command", "extension", subcommand, *args]
    raise BuildError("Blender's extension builder was not found: install bpy (pip install -e '.[blender]') "
                     "or put Blender 4.2 or newer on PATH as `blender`")


def project_version() -> str:
    """The one version number, pyproject.toml's."""
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        raise BuildError(f"{pyproject} not found: build the extension from a source checkout of videograin")
    return tomllib.loads(pyproject.read_text())["project"]["version"]


def download_wheels(platform: str, cache: Path) -> list[Path]:
    """The pinned wheels for one Blender platform and each of Blender's Pythons, kept in `cache`."""
    pinned = [f"{name}=={version}" for name, version in WHEELS.items()]
    wheels = []
    for python in PYTHONS:
        folder = cache / platform / python
        if not all(any(folder.glob(f"{name}-{version}-*.whl")) for name, version in WHEELS.items()):
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                       "--python-version", python, "--implementation", "cp", "--dest", str(folder)]
            for tag in PLATFORM_TAGS[platform]:
                command += ["--platform", tag]
            done = subprocess.run(command + pinned, capture_output=True, text=True)
            if done.returncode != 0:
                raise DownloadError(f"could not download {', '.join(pinned)} for {platform}, Python {python} "
                                 f"(the first build needs the package index):\n{done.stderr.strip()}")
        wheels += [wheel for name, version in WHEELS.items() for wheel in folder.glob(f"{name}-{version}-*.whl")]
    return wheels


def staged_manifest(source: str, version: str, platforms: list[str], wheels: list[str]) -> str:
    """The source manifest with pyproject's version, and the platforms and wheels this build bundles."""
    text, count = re.subn(r'^version = "[^"]*"$', f'version = "{version}"', source, flags=re.M)
    if count != 1:
        raise BuildError("blender_manifest.toml needs exactly one top-level `version = \"...\"` line")
    top_level, tables = re.split(r"^(?=\[)", text, maxsplit=1, flags=re.M)
    listed = "".join(f'    "./wheels/{name}",\n' for name in wheels)
    generated = f"platforms = {json.dumps(platforms)}\nwheels = [\n{listed}]\n\n"
    return top_level + generated + tables


def stage(folder: Path, version: str, platforms: list[str], cache: Path) -> None:
    """Lay out in `folder` what Blender's builder packs."""
    shutil.copytree(ADDON, folder, ignore=shutil.ignore_patterns("build.py", "__pycache__", "*.pyc"))
    (folder / "protocol").mkdir()
    for name in PROTOCOL_FILES:
        shutil.copy2(ROOT / "protocol" / name, folder / "protocol" / name)
    shutil.copy2(ROOT / "LICENSE", folder / "protocol" / "LICENSE")  # the protocol's Apache-2.0 text
    (folder / "wheels").mkdir()
    for wheel in {w.name: w for platform in platforms for w in download_wheels(platform, cache)}.values():
        shutil.copy2(wheel, folder / "wheels" / wheel.name)
    wheels = sorted(wheel.name for wheel in (folder / "wheels").iterdir())
    manifest = folder / "blender_manifest.toml"
    manifest.write_text(staged_manifest(manifest.read_text(), version, platforms, wheels))


def build(out: Path, platforms: list[str], wheel_cache: Path | None = None) -> list[Path]:
    """Build one extension zip per platform into `out`; returns their paths."""
    # Everything that can be wrong is checked before any download.
    command, version = extension_command("build"), project_version()
    if not platforms or not set(platforms) <= set(PLATFORM_TAGS):
        raise BuildError(f"platforms {platforms}: choose one or more of {', '.join(PLATFORM_TAGS)}")
    if out.resolve().is_relative_to(ADDON):
        raise BuildError(f"--out {out} is inside {ADDON}, which the build copies: choose a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    # Built beside `out`, then renamed into it: a failed build leaves nothing half-written there.
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as scratch:
        staging, built = Path(scratch) / "videograin", Path(scratch) / "zips"
        built.mkdir()
        stage(staging, version, sorted(platforms), wheel_cache or Path(scratch) / "wheels")
        done = subprocess.run(command + ["--source-dir", str(staging), "--output-dir", str(built), "--split-platforms"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"Blender's extension builder failed:\n{done.stdout}{done.stderr}".rstrip())
        zips = []
        for archive in sorted(built.glob("*.zip")):
            os.replace(archive, out / archive.name)
            zips.append(out / archive.name)
    return zips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="folder for the zips (default: dist/)")
    parser.add_argument("--platform", action="append", choices=list(PLATFORM_TAGS), help="repeatable; default: all")
    parser.add_argument("--wheel-cache", help="keep downloaded wheels here between builds")
    args = parser.parse_args(argv)
    try:
        zips = build(Path(args.out), args.platform or list(PLATFORM_TAGS),
                     Path(args.wheel_cache) if args.wheel_cache else None)
    except BuildError as error:
        parser.exit(1, f"error: {error}\n")
    for archive in zips:
        print(f"{archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
