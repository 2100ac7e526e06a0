import sys

from hpcmig.cli import main

sys.exit(main())
