"""The VideoGrain edit as diffusers parts: ST-Layout attention, region layout and passes for every model, and
one folder per model family (families/) with its processors and pipeline. Takes tensors
and arrays; knows nothing of files, serving or the command line."""
