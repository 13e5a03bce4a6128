"""`python -m clearsight`: the same command line as `clearsight`."""

import sys

from clearsight.cli import main

sys.exit(main())
