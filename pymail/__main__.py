"""`python -m pymail` is the `pymail` command."""

import sys

from pymail.cli.main import main

sys.exit(main())
