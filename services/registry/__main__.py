import sys

from services.registry.cli import main

sys.exit(main())
