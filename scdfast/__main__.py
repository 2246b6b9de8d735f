import sys

from scdfast.cli import main

sys.exit(main())
