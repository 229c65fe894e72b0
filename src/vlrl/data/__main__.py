"""``python -m vlrl.data --local PATH --splits-dir D --manifest M``: see :mod:`vlrl.data.cli`."""

from vlrl.data.cli import main

raise SystemExit(main())
