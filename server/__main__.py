import sys

from tessera.server.cli import main

sys.exit(main())
