"""videograin engine: multi-grained, text-driven video editing (VideoGrain, ICLR 2025) on diffusers."""

__version__ = "0.1.0"
