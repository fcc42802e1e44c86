"""The inversion cache: what inverting a clip yields, kept on disk for the next edit of the same clip.

Inversion depends on the frames, the working size, the source prompt, the control maps and their scale,
the steps, the model, the ControlNet and its attention, the dtype and device, the pass layout, the flow
trajectories and which steps record injection features; never on the target prompt, the regions or the
modulation. A re-edit that changes only those skips inversion and gives the very frames an uncached run
gives: the tensors come back bit for bit, in the memory format they were made in.

One file per pass, `videograin-<key>.vginv`, keyed by a SHA-256 of exactly those inputs (`job_key`),
written atomically (a temporary name, then a rename), so engines sharing one folder never see a torn
entry. The folder is untrusted storage (inverted latents decode back to the footage, and whoever can
write there could plant an inversion): it is made 0700, and every entry carries an HMAC-SHA256, keyed
with a secret kept beside the entries (`videograin-cache.key`, made once per folder, 0600), over its
cache key and every byte of its tensors and metadata. An entry that fails it, or that cannot be read
for any reason, is deleted and recomputed, never used. The folder is kept under a size cap by evicting
the least recently used entries (a hit touches its file); files that are not named as entries (other
programs' models, say) are never touched.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from videograin.engine.errors import JobError
from videograin.engine.inputs.media import write_atomic
from videograin.engine.method.passes import PassInversion

log = logging.getLogger(__name__)

FORMAT = "videograin-inversion-2"
ENTRY_PREFIX, ENTRY_SUFFIX = "videograin-", ".vginv"  # the only files the cache reads, writes or evicts
KEY_FILE = "videograin-cache.key"
MAGIC = b"VGINV2\n"  # then the 32-byte tag, then a safetensors file
TAG_BYTES = 32
DEFAULT_SIZE = 20 * 2**30
SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def default_folder() -> Path:
    """The user's cache directory: $XDG_CACHE_HOME/videograin/inversions, else ~/.cache/videograin/..."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "videograin" / "inversions"


def parse_size(text: str) -> int:
    """`--cache-size` values: bytes, or a number with K, M, G or T (powers of 1024), e.g. 20G."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in SIZE_UNITS and value[-1:] else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise JobError(f"cache size '{text}' is not a size: write bytes or a number with K, M, G or T, e.g. 20G") from None
    if number < 0:
        raise JobError(f"cache size '{text}' must not be negative")
    return int(number * SIZE_UNITS[unit])


def job_key(material: dict[str, Any]) -> str:
    """SHA-256 over the inversion's inputs: arrays by dtype, shape and bytes, everything else as JSON."""
    digest = hashlib.sha256()
    for name in sorted(material):
        value = material[name]
        digest.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous().numpy()
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, dict) and any(isinstance(v, (np.ndarray, torch.Tensor)) for v in value.values()):
            digest.update(job_key({f"{name}.{k}": v for k, v in value.items()}).encode())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        digest.update(b"\1")
    return digest.hexdigest()


def _flatten(inversion: PassInversion) -> dict[str, torch.Tensor]:
    tensors = {"latents": inversion.latents}
    tensors |= {f"source/{t}": x for t, x in inversion.source.items()}
    tensors |= {f"features/{t}/{name}": x for t, named in inversion.features.items() for name, x in named.items()}
    return tensors


def _unflatten(tensors: dict[str, torch.Tensor]) -> PassInversion:
    inversion = PassInversion(tensors.pop("latents"))
    for name, tensor in tensors.items():
        kind, timestep, *rest = name.split("/", 2)
        if kind == "source":
            inversion.source[int(timestep)] = tensor
        else:
            inversion.features.setdefault(int(timestep), {})[rest[0]] = tensor
    return inversion


def _tag(secret: bytes, key: str, payload: bytes) -> bytes:
    """The entry's HMAC: its cache key (so an entry renamed to another key fails) and every byte."""
    return hmac.new(secret, MAGIC + key.encode() + b"\0" + payload, hashlib.sha256).digest()


def _folder_secret(folder: Path) -> bytes:
    """The folder's MAC key, made on first use (0600, published whole by a hard link, so that engines
    starting together agree on one); a key file that is not 64 hex digits is replaced, which turns
    every entry made under it into a miss."""
    path = folder / KEY_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            _publish_secret(folder, path)
            continue
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            text = b"a symbolic link"
        else:
            with os.fdopen(fd, "rb") as handle:
                text = handle.read(65).strip()
            if re.fullmatch(rb"[0-9a-f]{64}", text):
                return bytes.fromhex(text.decode())
        log.warning("inversion cache key %s is malformed: making a new one (cached entries are recomputed)", path)
        path.unlink(missing_ok=True)
    raise JobError(f"inversion cache key '{path}' cannot be made; choose another folder with --cache")


def _publish_secret(folder: Path, path: Path) -> None:
    tmp = folder / f".{KEY_FILE}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        os.link(tmp, path)  # fails when another engine published first: then theirs is read
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _on(tensor: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    tensor = tensor.to(device)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file: an 8-byte little-endian header length, then JSON."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


class InversionCache:
    """Pass inversions on disk under `folder`, at most `max_bytes` in all."""

    def __init__(self, folder: Path | None = None, max_bytes: int = DEFAULT_SIZE) -> None:
        self.folder = folder or default_folder()
        self.max_bytes = max_bytes
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._secret = _folder_secret(self.folder)
        except OSError as exc:
            raise JobError(f"inversion cache folder '{self.folder}' cannot be made: {exc}; choose another with --cache") from None

    def _path(self, key: str) -> Path:
        return self.folder / f"{ENTRY_PREFIX}{key}{ENTRY_SUFFIX}"

    def get(self, key: str, device: torch.device) -> PassInversion | None:
        """The entry for `key` on `device`, or None (missing, or corrupt: then it is deleted)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
            payload = data[len(MAGIC) + TAG_BYTES :]
            if data[: len(MAGIC)] != MAGIC or not hmac.compare_digest(data[len(MAGIC) : len(MAGIC) + TAG_BYTES],
                                                                      _tag(self._secret, key, payload)):
                raise ValueError("not an entry of this cache, or altered")
            metadata = _metadata(payload)
            if metadata.get("format") != FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}")
            tensors = load_tensors(payload)
            channels_last = set(json.loads(metadata.get("channels_last", "[]")))
            inversion = _unflatten({name: _on(tensor, device, name in channels_last) for name, tensor in tensors.items()})
        except FileNotFoundError:
            return None
        except Exception as exc:  # unreadable, truncated, altered, foreign or malformed in any way: never use it
            log.warning("inversion cache entry %s is unusable (%s): recomputing", path.name, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError:  # e.g. a folder of that name: the recomputed entry cannot replace it either
                pass
            return None
        try:
            os.utime(path)  # least recently used goes first
        except FileNotFoundError:  # evicted by another engine since it was read: what was read is whole
            pass
        return inversion

    def put(self, key: str, inversion: PassInversion) -> None:
        tensors = _flatten(inversion)
        channels_last = [n for n, t in tensors.items() if t.dim() == 4 and not t.is_contiguous() and
                         t.is_contiguous(memory_format=torch.channels_last)]
        cpu: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for name, tensor in tensors.items():
            tensor = tensor.detach().cpu().contiguous()
            if tensor.untyped_storage().data_ptr() in storages:  # safetensors refuses shared memory
                tensor = tensor.clone()  # e.g. the last step's source latents are the inverted latents
            storages.add(tensor.untyped_storage().data_ptr())
            cpu[name] = tensor
        payload = save_tensors(cpu, {"format": FORMAT, "channels_last": json.dumps(channels_last)})
        data = MAGIC + _tag(self._secret, key, payload) + payload
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: keeping it would evict everything else for nothing
        write_atomic(self._path(key), data)  # readable by every engine sharing the folder, never torn
        self.evict()

    def evict(self) -> None:
        """Delete least recently used entries until the folder is under the cap; only files named as
        entries count and go."""
        entries = []
        for path in self.folder.glob(f"{ENTRY_PREFIX}*{ENTRY_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another engine evicted it meanwhile
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def fetch(self, key: str, device: torch.device, compute: Callable[[], PassInversion]) -> tuple[PassInversion, bool]:
        """The cached inversion, or `compute()`'s, stored for next time; and whether it was a hit."""
        cached = self.get(key, device)
        if cached is not None:
            return cached, True
        inversion = compute()
        self.put(key, inversion)
        return inversion, False


def cache_from_args(args) -> InversionCache | None:
    if args.no_cache:
        return None
    return InversionCache(Path(args.cache).expanduser() if args.cache else None, parse_size(args.cache_size))
