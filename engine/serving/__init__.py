"""The engine process: the protocol loop, its job queue and the frames it keeps for `attach`."""
