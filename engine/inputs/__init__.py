"""What an edit reads: clips and mattes on disk, control maps, job files. Knows nothing of the method."""
