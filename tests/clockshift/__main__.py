"""``python -m tests.clockshift``: see the package docstring."""

import sys

from tests.clockshift import main

sys.exit(main())
