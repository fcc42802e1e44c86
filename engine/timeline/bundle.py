"""`.otioz` bundles: unpacked within a size budget, their files known by what the bundle says of them.

A bundle is a zip of `content.otio` and its media (`media/...`). Unpacking is refused before a byte is
written when its members would take more than the budget (a zip bomb declares sizes far beyond what it
occupies). The unpacked files get fresh modification times on every run; their identity (for reusing
finished shots) is what the bundle records: name, size and CRC.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import opentimelineio as otio

from videograin.engine.errors import JobError
from videograin.engine.inputs.limits import check_json_depth

CONTENT = "content.otio"
# Media in a bundle are stored, not compressed, by OTIO's writer (video and PNG do not deflate anyway):
# members may take at most this many times the bundle's size, plus some room for the timeline itself.
MAX_EXPANSION = 10
EXPANSION_ALLOWANCE = 64 * 2**20
FREE_SPACE_RESERVE = 2**30  # what unpacking leaves free on the disk it unpacks to


@dataclass(frozen=True)
class Bundle:
    """An unpacked `.otioz`: where it came from, where it lies, and its files' recorded identity."""

    path: Path
    folder: Path
    members: dict[Path, tuple[str, int, int]] = field(default_factory=dict)  # file -> (name, size, CRC-32)

    def identity(self, path: Path) -> tuple | None:
        """How the bundle records the file, or None for a file outside it."""
        return self.members.get(path)

    def shown(self, text: str) -> str:
        """A message about unpacked files, naming them inside the bundle the user gave."""
        return text.replace(str(self.folder), str(self.path))


def unpack(path: Path, folder: Path) -> tuple[otio.schema.Timeline, Bundle]:
    """Read the bundle's timeline and unpack its files into `folder` (which must exist)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise JobError(f"timeline '{path}' is not a readable .otioz bundle: {exc}") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        total = sum(info.file_size for info in infos)
        budget = min(
            MAX_EXPANSION * path.stat().st_size + EXPANSION_ALLOWANCE,
            shutil.disk_usage(folder).free - FREE_SPACE_RESERVE,
        )
        if total > budget:
            raise JobError(
                f"timeline '{path}' would unpack to {_size(total)}, more than this bundle may take "
                f"({_size(budget)}: {MAX_EXPANSION}x its size, within the free space of '{folder}'): "
                "it is damaged or not an OpenTimelineIO bundle; export the timeline again"
            )
        try:
            text = archive.read(CONTENT).decode()
            check_json_depth(text, f"timeline '{path}'")
            timeline = otio.adapters.read_from_string(text, "otio_json")
            archive.extractall(folder)  # member names are made safe: nothing lands outside `folder`
        except KeyError:
            raise JobError(f"timeline '{path}' holds no {CONTENT}: export it from the editor as .otioz") from None
        except JobError:
            raise
        except Exception as exc:  # a corrupt member, bad JSON: the bundle, not this program
            raise JobError(f"timeline '{path}' cannot be read as .otioz: {type(exc).__name__}: {exc}") from None
    members = {(folder / info.filename).resolve(): (info.filename, info.file_size, info.CRC) for info in infos}
    return timeline, Bundle(path, folder, members)


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"

