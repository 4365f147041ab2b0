"""`python -m xfer.client.cli` runs the `xfer` command."""

import sys

from xfer.client.cli.main import main

sys.exit(main())
