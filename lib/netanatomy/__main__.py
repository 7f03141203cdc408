"""`python -m netanatomy run <notebook> -f params/<file>.yaml [-p name value ...]` (see `netanatomy.cli`)."""

import sys

from .cli import main

sys.exit(main())
