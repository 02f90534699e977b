"""Allow `python -m ScreenerCore ...` as an alias of the `screener` command."""

import sys

from .cli import main

sys.exit(main())
