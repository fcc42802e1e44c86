"""The VideoGrain edit as diffusers parts: attention, layout, processors and the pipeline. Takes tensors
and arrays; knows nothing of files, serving or the command line."""
