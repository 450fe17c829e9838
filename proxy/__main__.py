"""`python -m proxy`: the same as the `grayscale` command."""

import sys

from proxy.cli import main

sys.exit(main())
