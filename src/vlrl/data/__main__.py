"""``python -m vlrl.data --local PATH --splits-dir D --manifest M``: see :mod:`vlrl.data.cli`."""

from vlrl.data.cli import main
from vlrl.entry import run_stage

run_stage(main, prog="python -m vlrl.data")
