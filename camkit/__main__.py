"""``python -m camkit``: the ``camkit`` command (see :mod:`camkit.cli`)."""

import sys

from camkit.cli import main

sys.exit(main())
