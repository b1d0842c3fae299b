"""Entry point for ``python -m t2t.server``."""

import sys

from t2t.server.cli import main

sys.exit(main())
