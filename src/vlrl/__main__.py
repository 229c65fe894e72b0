"""``python -m vlrl``: the same as the ``vlrl`` console command."""

import sys

from vlrl.cli import main

sys.exit(main())
