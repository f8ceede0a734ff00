import sys

from ductile.cli.main import main

sys.exit(main())
