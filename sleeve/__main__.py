"""`python -m sleeve` == the `sleeve` console script."""

import sys

from sleeve.cli import main

sys.exit(main())
