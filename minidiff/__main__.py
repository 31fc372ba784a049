"""``python -m minidiff ...``: see minidiff/cli.py."""
import sys

from .cli import main

sys.exit(main())
