import sys

from auf_assets.cli.main import main

sys.exit(main())
