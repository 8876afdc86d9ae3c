"""Entry point: ``python run_recbole_flame.py --model=FLAME --dataset=ml-100k``."""

import sys

from recbole_flame.cli import main

if __name__ == "__main__":
    sys.exit(main())
