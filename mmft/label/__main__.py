"""`python -m mmft.label ...`: the `mmft label` commands."""

import sys

from mmft.label.cli import main

sys.exit(main())
