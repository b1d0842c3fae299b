"""Entry point for ``python -m t2t.ca``."""

from __future__ import annotations

import sys

from t2t.ca.cli import main

if __name__ == "__main__":
    sys.exit(main())
