"""``python -m clusterlab``: the ``clusterlab`` command."""

import sys

from clusterlab.cli import main

sys.exit(main())
