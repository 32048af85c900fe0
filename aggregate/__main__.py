"""``python -m aggregate``: the ``aggregate`` command."""

import sys

from aggregate.cli import main

sys.exit(main())
