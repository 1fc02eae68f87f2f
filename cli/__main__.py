"""`python3 -m tcc.cli`."""
import sys

from . import main

sys.exit(main())
