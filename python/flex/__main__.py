"""``python -m flex``: the ``flex`` command (see :mod:`flex.cli`)."""
import sys

from .cli import main

sys.exit(main())
