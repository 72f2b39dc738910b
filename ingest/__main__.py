"""`python -m tessera.ingest ...`: the standalone consumer (the flags of `tessera ingest`)."""

import sys

from tessera.ingest.cli import main

sys.exit(main())
