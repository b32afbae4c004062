"""`python -m convlens.cli ...` (and `torchrun -m convlens.cli ...`) runs the command line."""

import sys

from convlens.cli import main

sys.exit(main())
