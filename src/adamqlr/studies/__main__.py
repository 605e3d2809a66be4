"""``python -m adamqlr.studies``: the same as ``adamqlr study``."""

import sys

from adamqlr.studies.cli import main

sys.exit(main())
