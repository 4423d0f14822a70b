"""``python -m qpm_sklearn.cli``: the ``qpm-sklearn`` command."""

import sys

from . import main

sys.exit(main())
