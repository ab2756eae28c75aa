import sys

from roli.cli.main import main

sys.exit(main())
