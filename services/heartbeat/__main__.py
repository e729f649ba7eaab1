import sys

from services.heartbeat.cli import main

sys.exit(main())
