"""videograin: multi-grained, text-driven video editing (VideoGrain, ICLR 2025) for video editors.

One import name for the whole project. The repository keeps its parts in top-level folders, mapped
under this package by pyproject.toml: `videograin.engine` (engine/), `videograin.protocol` (protocol/)
and `videograin.blender_addon` (blender_addon/).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one version number lives in pyproject.toml; installed metadata carries it here.
    __version__ = version("videograin")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
