"""What ships: the sdist and wheel (one import name, every package, SPEC.md, clean metadata), the Blender
extension zips (Blender's validator, GPL with the licence texts, one platform's wheels each), and one
version number everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import videograin

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def source_packages() -> set[str]:
    """Every folder of the checkout that holds an __init__.py, named as pyproject's package-dir maps it."""
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*__init__.py"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    names = set()
    for init in listed:
        folder = Path(init).parent.as_posix()
        mapped = [(path, name) for name, path in package_dir.items() if folder == path or folder.startswith(path + "/")]
        if not mapped:
            names.add(f"{folder} (not under any [tool.setuptools.package-dir] folder)")
            continue
        path, name = max(mapped, key=lambda item: len(item[0]))
        names.add(name + folder[len(path):].replace("/", "."))
    return names


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it (as `python -m build` does: a file missing from the sdist
    would be missing from the wheel too)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [sdist], [wheel] = out.glob("*.tar.gz"), out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_wheel_has_one_import_name_and_every_package(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    dist_info = f"videograin-{VERSION}.dist-info"
    assert {name.split("/")[0] for name in names} == {"videograin", dist_info}
    assert "videograin/protocol/SPEC.md" in names
    packages = {name.removesuffix("/__init__.py").replace("/", ".") for name in names if name.endswith("/__init__.py")}
    assert packages == source_packages(), "add the new package to [tool.setuptools] packages in pyproject.toml"
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/blender_addon/LICENSE"} <= set(names)


def test_sdist_and_wheel_pass_twine_check(dists):
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def zip_manifest(archive: Path) -> dict:
    return tomllib.loads(zipfile.ZipFile(archive).read("blender_manifest.toml").decode())


@pytest.fixture(scope="module")
def extension_zips(tmp_path_factory, extension_wheel_cache) -> dict[str, Path]:
    """Every platform's zip, by the platform its manifest names; wheels are downloaded once per checkout (once per
    run under `-p no:cacheprovider`)."""
    from videograin.blender_addon.build import PLATFORM_TAGS, DownloadError, build

    try:
        zips = build(tmp_path_factory.mktemp("extension"), list(PLATFORM_TAGS),
                     wheel_cache=extension_wheel_cache)
    except DownloadError as error:  # no package index here; any other build failure fails the tests
        pytest.skip(str(error))
    by_platform = {platform: archive for archive in zips
                   for platform in zip_manifest(archive)["build"]["generated"]["platforms"]}
    assert sorted(by_platform) == sorted(PLATFORM_TAGS) and len(zips) == len(PLATFORM_TAGS)
    return by_platform


def test_every_zip_and_the_source_pass_blenders_validator(extension_zips):
    from videograin.blender_addon.build import extension_command

    for path in [ROOT / "blender_addon", *extension_zips.values()]:
        done = subprocess.run(extension_command("validate", str(path)), capture_output=True, text=True)
        assert done.returncode == 0, f"{path.name}: {done.stdout}{done.stderr}"


def test_zips_are_gpl_and_carry_both_licence_texts(extension_zips):
    gpl, apache = (ROOT / "blender_addon" / "LICENSE").read_bytes(), (ROOT / "LICENSE").read_bytes()
    assert b"GNU GENERAL PUBLIC LICENSE" in gpl and b"Version 3, 29 June 2007" in gpl
    assert b"Apache License" in apache and b"Version 2.0, January 2004" in apache
    for archive in extension_zips.values():
        assert zip_manifest(archive)["license"] == ["SPDX:GPL-3.0-or-later"]
        with zipfile.ZipFile(archive) as contents:
            assert contents.read("LICENSE") == gpl, archive.name
            assert contents.read("protocol/LICENSE") == apache, archive.name  # the vendored client's own licence


def wheel_fits(platform: str, wheel: str) -> bool:
    """Whether every platform tag of a wheel file name (manylinux_2_28_x86_64, win_amd64,
    macosx_10_15_universal2...) runs on a Blender platform (linux-x64, windows-x64, macos-arm64...)."""
    system, machine = platform.split("-")
    prefix = {"linux": "manylinux", "windows": "win", "macos": "macosx"}[system]
    machines = {"x64": ["x86_64", "amd64"], "arm64": ["aarch64", "arm64"]}[machine]
    machines += ["universal2"] * (system == "macos")  # one wheel for both Macs
    tags = wheel.removesuffix(".whl").split("-")[-1].split(".")
    return all(tag.startswith(prefix) and tag.endswith(tuple("_" + m for m in machines)) for tag in tags)


def wheel_serves(wheel: str, python: tuple[int, int]) -> bool:
    """Whether a CPython wheel (cp311-cp311, or a stable-ABI cp312-abi3) runs on that Python."""
    _, _, python_tag, abi, _ = wheel.removesuffix(".whl").split("-")
    built_for = (3, int(python_tag.removeprefix("cp3")))
    return built_for == python or (abi == "abi3" and built_for <= python)


def test_each_zip_carries_only_its_platforms_wheels_for_both_pythons(extension_zips):
    for platform, archive in extension_zips.items():
        names = zipfile.ZipFile(archive).namelist()
        wheels = [name.removeprefix("wheels/") for name in names if name.startswith("wheels/")]
        assert all(wheel_fits(platform, wheel) for wheel in wheels), (platform, wheels)
        for package in ("pyzmq", "msgpack"):
            for python in [(3, 11), (3, 13)]:  # Blender 4.2-5.0, and 5.1+
                serving = [w for w in wheels if w.startswith(package + "-") and wheel_serves(w, python)]
                assert len(serving) == 1, (platform, package, python, wheels)
        assert sorted(wheels) == sorted(w.removeprefix("./wheels/")
                                        for w in zip_manifest(archive)["build"]["generated"]["wheels"])


def test_one_version_everywhere(extension_zips, tiny_engine):
    from conformance import RawPeer

    peer = RawPeer(json.loads(Path(tiny_engine).read_text()))
    try:
        welcome = peer.request({"type": "hello", "versions": [1], "client": "packaging-test"})
    finally:
        peer.close()
    command = subprocess.run([Path(sys.executable).parent / "videograin", "--version"],
                             capture_output=True, text=True, check=True).stdout.split()
    source_manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    versions = {
        "blender_addon/blender_manifest.toml": source_manifest["version"],
        **{f"{platform} zip": zip_manifest(archive)["version"] for platform, archive in extension_zips.items()},
        "videograin.__version__ (installed metadata: reinstall after a bump)": videograin.__version__,
        "videograin --version": command[-1],
        "welcome": welcome["engine"]["version"],
    }
    assert versions == dict.fromkeys(versions, VERSION), f"pyproject.toml says {VERSION}"
