import sys

from services.gitops_sync.cli import main

sys.exit(main())
