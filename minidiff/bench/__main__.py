"""``python -m minidiff.bench``: the same as ``python -m minidiff bench``."""
import sys

from . import main

sys.exit(main())
