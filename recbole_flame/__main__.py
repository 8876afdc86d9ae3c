"""``python -m recbole_flame --model=FLAME --dataset=ml-100k``: the command line (see cli.py)."""

import sys

from recbole_flame.cli import main

sys.exit(main())
