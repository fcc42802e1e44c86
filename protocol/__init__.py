"""videograin engine protocol v1: the spec (SPEC.md), its wire format and the reference client."""
