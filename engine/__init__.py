"""The engine: the VideoGrain edit on diffusers, its inputs, and the process that serves it."""
