"""The inversion cache: hits exactly when inversion's inputs are the same, bit-identical frames, corrupt
entries recomputed, least recently used entries evicted, engines sharing a folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import limit

from videograin.engine.cache import InversionCache, job_key, parse_size
from videograin.engine.errors import JobError
from videograin.engine.inputs.job import load_job
from videograin.engine.method.passes import PassInversion
from videograin.engine.runner import edit_clip


@pytest.fixture()
def small_job(tmp_path):
    from videograin.engine.demo import write_demo_inputs

    return load_job(write_demo_inputs(tmp_path / "input", frames=3, size=64, steps=3))


def _hits(job, pipe, cache) -> int:
    return edit_clip(job, pipe, cache=cache).cached_passes


def test_a_reedit_of_target_settings_hits_and_gives_the_uncached_frames(small_job, tiny_pipe, tmp_path):
    cache = InversionCache(tmp_path / "cache")
    small_job.settings.inject_step = 1  # features for injection are cached too
    assert _hits(small_job, tiny_pipe, cache) == 0
    s = small_job.settings
    s.prompt, s.regions[0].phrase = "an iron man and a spider man are walking under cherry blossoms", "iron man"
    s.modulation.cross, s.seed, s.blend = 0.5, 3, False
    cached = edit_clip(small_job, tiny_pipe, cache=cache)
    assert cached.cached_passes == 1
    np.testing.assert_array_equal(cached.frames, edit_clip(small_job, tiny_pipe).frames)


def _change_frames(job):
    job.frames[0, 0, 0] ^= 0xFF


def _change_control(job):
    job.settings.control.low_threshold = 30


CHANGES = {
    "frames": _change_frames,
    "working size": lambda job: setattr(job.settings.source, "width", 72),
    "source prompt": lambda job: setattr(job.settings, "source_prompt", "two women walk"),
    "control maps": _change_control,
    "control scale": lambda job: setattr(job.settings.control, "scale", 0.5),
    "steps": lambda job: setattr(job.settings, "steps", 4),
    "model": lambda job: setattr(job.settings, "model", "another/model"),
    "controlnet": lambda job: setattr(job.settings, "controlnet", "another/controlnet"),
    "controlnet attention": lambda job: setattr(job.settings, "controlnet_attention", "full"),
    "injection steps": lambda job: setattr(job.settings, "inject_step", 2),
    "pass layout": lambda job: setattr(job.settings, "window", 2),
    "flow method": lambda job: setattr(job.settings.flow, "method", "farneback"),
    "flow preset": lambda job: setattr(job.settings.flow, "preset", "fast"),
    "trajectory levels": lambda job: setattr(job.settings.flow, "levels", [1, 2]),
    "trajectories off": lambda job: setattr(job.settings.flow, "method", "none"),
}


def test_the_pipelines_precision_is_part_of_the_key(small_job, tmp_path):
    from videograin.engine.models import tiny_pipeline

    cache = InversionCache(tmp_path / "cache")
    pipe = tiny_pipeline()
    assert _hits(small_job, pipe, cache) == 0
    pipe.to(torch.float64)  # same weights, another precision: its inversion is not this one's
    assert _hits(small_job, pipe, cache) == 0
    assert _hits(small_job, pipe, cache) == 1


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_every_input_of_inversion_misses(change, small_job, tiny_pipe, tmp_path):
    cache = InversionCache(tmp_path / "cache")
    assert _hits(small_job, tiny_pipe, cache) == 0
    assert _hits(small_job, tiny_pipe, cache) == 1
    CHANGES[change](small_job)
    assert _hits(small_job, tiny_pipe, cache) == 0


def test_a_corrupt_entry_is_recomputed_never_used(small_job, tiny_pipe, tmp_path):
    cache = InversionCache(tmp_path / "cache")
    first = edit_clip(small_job, tiny_pipe, cache=cache).frames
    (entry,) = cache.folder.glob("*.vginv")
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])  # truncated
    again = edit_clip(small_job, tiny_pipe, cache=cache)
    assert again.cached_passes == 0
    np.testing.assert_array_equal(again.frames, first)
    data = bytearray(entry.read_bytes())  # rewritten whole by the recompute
    data[-5] ^= 0x01  # one bit of one tensor flipped
    entry.write_bytes(bytes(data))
    assert edit_clip(small_job, tiny_pipe, cache=cache).cached_passes == 0
    assert edit_clip(small_job, tiny_pipe, cache=cache).cached_passes == 1


def _inversion(seed: int, size: int = 4096) -> PassInversion:
    g = torch.Generator().manual_seed(seed)
    return PassInversion(torch.randn(size, generator=g), {0: torch.randn(size, generator=g)})


def test_an_inversion_whose_tensors_share_memory_is_kept_and_read_back(tmp_path):
    cache = InversionCache(tmp_path / "cache")
    inversion = _inversion(0)
    inversion.source[501] = inversion.latents  # the last step's source latents are the inverted latents
    cache.put("shared", inversion)
    back = cache.get("shared", torch.device("cpu"))
    assert torch.equal(back.latents, inversion.latents) and torch.equal(back.source[501], inversion.latents)


def test_the_size_cap_evicts_the_least_recently_used(tmp_path):
    cache = InversionCache(tmp_path / "cache", max_bytes=3 * 2 * 4096 * 4 + 3 * 1024)  # room for three
    for n in range(3):
        cache.put(f"entry{n}", _inversion(n))
        os.utime(cache._path(f"entry{n}"), (time.time() - 100 + n, time.time() - 100 + n))  # distinct ages
    assert cache.get("entry0", torch.device("cpu")) is not None  # a hit makes entry0 the most recent
    cache.put("entry3", _inversion(3))
    assert {p.name for p in cache.folder.glob("*.vginv")} == {cache._path(f"entry{n}").name for n in (0, 2, 3)}
    got = cache.get("entry3", torch.device("cpu"))
    torch.testing.assert_close(got.source[0], _inversion(3).source[0], rtol=0, atol=0)


def test_sizes_and_keys():
    assert parse_size("20G") == 20 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("100") == 100
    with pytest.raises(JobError, match="not a size"):
        parse_size("lots")
    a = {"frames": np.zeros((2, 2), np.uint8), "prompt": "x"}
    assert job_key(a) == job_key(dict(a)) != job_key({**a, "prompt": "y"})
    assert job_key(a) != job_key({**a, "frames": np.zeros((2, 2), np.int8)})


SHARED_WRITER = """
import sys, torch
from pathlib import Path
from videograin.engine.cache import InversionCache
from videograin.engine.method.passes import PassInversion
cache = InversionCache(Path(sys.argv[1]), max_bytes=6 * 70_000)
for n in range(60):
    key = f"entry{n % 9}"
    value = float(n % 9)
    got = cache.get(key, torch.device("cpu"))
    assert got is None or bool((got.latents == value).all()), "a torn or foreign entry was read"
    cache.put(key, PassInversion(torch.full((16384,), value), {0: torch.full((16,), value)}))
print("done")
"""


def test_two_engines_sharing_a_folder_never_corrupt_it(tmp_path):
    folder = tmp_path / "cache"
    writers = [subprocess.Popen([sys.executable, "-c", SHARED_WRITER, str(folder)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    for writer in writers:
        out, _ = writer.communicate(timeout=limit(120))
        assert writer.returncode == 0 and "done" in out
    cache = InversionCache(folder, max_bytes=6 * 70_000)
    entries = list(folder.glob("*.vginv"))
    assert entries and not list(folder.glob(".*.tmp"))
    for entry in entries:
        key = entry.name.removeprefix("videograin-").removesuffix(".vginv")
        assert cache.get(key, torch.device("cpu")) is not None  # every entry whole, under the one shared key


# -- the folder as untrusted storage -----------------------------------------------------------------

def test_the_folder_is_private_and_its_key_made_once(tmp_path):
    cache = InversionCache(tmp_path / "new" / "cache")
    assert cache.folder.stat().st_mode & 0o777 == 0o700
    key_file = cache.folder / "videograin-cache.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    cache.put("a", _inversion(0))
    again = InversionCache(cache.folder)  # another engine on the same folder: the same key, a hit
    assert again.get("a", torch.device("cpu")) is not None and key_file.read_text() == cache._secret.hex()


def _entry_back(cache: InversionCache, key: str):
    return cache.get(key, torch.device("cpu"))


@pytest.mark.parametrize("spoil", ["tensor", "metadata", "magic", "garbage", "empty", "plain-safetensors",
                                   "renamed", "other-folder", "folder"])
def test_a_tampered_malformed_or_alien_entry_is_dropped(tmp_path, spoil):
    from safetensors.torch import save

    cache = InversionCache(tmp_path / "cache")
    cache.put("a", _inversion(0))
    path = cache._path("a")
    data = bytearray(path.read_bytes())
    if spoil == "tensor":
        data[-5] ^= 0x01
    elif spoil == "metadata":  # a format word changed: the tag covers the header as well as the tensors
        at = data.index(b"videograin-inversion-2")
        data[at : at + 22] = b"videograin-inversion-3"
    elif spoil == "magic":
        data[0] ^= 0x01
    elif spoil == "garbage":
        data = bytearray(os.urandom(200))
    elif spoil == "empty":
        data = bytearray()
    elif spoil == "plain-safetensors":  # a well-formed tensor file without this cache's tag
        data = bytearray(save({"latents": torch.zeros(4)}, {"format": "videograin-inversion-2"}))
    elif spoil == "renamed":  # a genuine entry of another key put in a's place
        cache.put("b", _inversion(1))
        data = bytearray(cache._path("b").read_bytes())
    elif spoil == "other-folder":  # made by a cache with another secret
        other = InversionCache(tmp_path / "other")
        other.put("a", _inversion(0))
        data = bytearray(other._path("a").read_bytes())
    if spoil == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(bytes(data))
    assert _entry_back(cache, "a") is None  # never used, whatever is wrong
    if spoil != "folder":
        assert not path.exists()  # dropped, so the recompute replaces it
        cache.put("a", _inversion(0))
        assert torch.equal(_entry_back(cache, "a").latents, _inversion(0).latents)


def test_a_malformed_entry_is_recomputed_by_the_edit(small_job, tiny_pipe, tmp_path):
    cache = InversionCache(tmp_path / "cache")
    first = edit_clip(small_job, tiny_pipe, cache=cache).frames
    (entry,) = cache.folder.glob("*.vginv")
    entry.write_bytes(b"VGINV2\n" + b"\xff" * 40)  # the magic, then nothing readable: raises while read
    again = edit_clip(small_job, tiny_pipe, cache=cache)
    assert again.cached_passes == 0
    np.testing.assert_array_equal(again.frames, first)
    assert edit_clip(small_job, tiny_pipe, cache=cache).cached_passes == 1


def test_a_replaced_key_file_turns_every_entry_into_a_miss(tmp_path):
    cache = InversionCache(tmp_path / "cache")
    cache.put("a", _inversion(0))
    (cache.folder / "videograin-cache.key").write_text("not a key")
    again = InversionCache(cache.folder)
    assert again.get("a", torch.device("cpu")) is None
    assert len((cache.folder / "videograin-cache.key").read_text()) == 64


def test_eviction_never_touches_other_programs_files(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    foreign = [folder / "model.safetensors", folder / f"{'ab' * 32}.safetensors", folder / "notes.txt",
               folder / "videograin-notes.txt"]
    for path in foreign:
        path.write_bytes(b"x" * 100_000)
    cache = InversionCache(folder, max_bytes=2 * 2 * 4096 * 4 + 2 * 1024)  # room for two entries only
    for n in range(4):
        cache.put(f"entry{n}", _inversion(n))
    assert all(path.read_bytes() == b"x" * 100_000 for path in foreign)
    assert len(list(folder.glob("*.vginv"))) == 2
