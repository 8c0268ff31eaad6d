import sys

from adapt3d.cli.main import main

sys.exit(main())
