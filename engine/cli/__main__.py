"""`python -m duorank.cli`"""

import sys

from . import main

sys.exit(main())
