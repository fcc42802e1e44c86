"""`python -m videograin`: the same command as `videograin`."""

import sys

from videograin.engine.cli import main

sys.exit(main())
