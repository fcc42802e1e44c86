"""Which paths on the engine's disk a request may name: the trust boundary of SPEC.md §1.

On loopback the key is the user's own, so a request may name any file the user can read. An engine
open to the network (`--allow-remote`) reads no path at all unless its operator names media roots
(`--media-root DIR`, repeatable), and then only below them; a loopback engine may be held to roots too.
Paths are absolute (relative and `~` paths are refused) and resolved, links included, before the check.
Below roots, a path that does not exist and a path outside them get the same answer, so that no reply
tells whether anything outside the roots exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from videograin.engine.errors import JobError, VideograinError, excerpt

PATH_EXCERPT = 300  # of a refused path, quoted in the error


@dataclass(frozen=True)
class MediaAccess:
    roots: tuple[Path, ...] | None  # None: any path; (): none at all

    @classmethod
    def for_engine(cls, roots: list[str] | None, remote: bool) -> MediaAccess:
        """The engine's access: below `roots` when given (each an existing folder), else anything on
        loopback and nothing when open to the network."""
        if roots:
            resolved = []
            for root in roots:
                path = Path(root).expanduser()
                if not path.is_dir():
                    raise VideograinError(f"--media-root '{root}' is not a folder", code="bad_config")
                resolved.append(Path(os.path.realpath(path)))
            return cls(tuple(resolved))
        return cls(() if remote else None)

    @property
    def mode(self) -> str:
        """What `welcome` says: "any", "roots" or "none"."""
        return "any" if self.roots is None else "roots" if self.roots else "none"

    def locate(self, value: object, what: str) -> Path:
        """The path to read for setting `what`, written `value`; JobError when a request may not read it."""
        if self.roots == ():
            raise JobError(f"{what}: this engine reads no paths (it is open to the network and has no "
                           "--media-root): send the pixels inline")
        if not isinstance(value, str) or not value or not Path(value).is_absolute():
            raise JobError(f"{what} must be an absolute path on the engine's disk (relative and ~ paths are "
                           f"refused), got {excerpt(value, PATH_EXCERPT)}")
        if self.roots is None:
            return Path(value)
        real = Path(os.path.realpath(value))
        if not any(real == root or root in real.parents for root in self.roots) or not real.exists():
            shown = ", ".join(str(root) for root in self.roots)
            raise JobError(f"{what}: {excerpt(value, PATH_EXCERPT)} is not a file or folder this engine may read: it reads "
                           f"paths that exist under its media roots ({shown})")
        return real

    def check_models(self, names: dict[str, object], default_model: str) -> None:
        """Model settings (setting -> value) that name a folder (absolute, `~` or relative from `.`) are
        held to the roots; hub ids and the engine's own model are not paths a request chooses."""
        if self.roots is None:
            return
        for what, value in names.items():
            if isinstance(value, str) and value != default_model and value.startswith(("/", "~", ".", "\\")):
                self.locate(value, what)
