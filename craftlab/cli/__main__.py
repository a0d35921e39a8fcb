"""``python -m craftlab.cli``: the same as the ``craftlab`` command."""

import sys

from . import main

sys.exit(main())
