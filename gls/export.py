"""``python -m gls.export``: a run's network and queries as a VNN-COMP benchmark; its code lives in gls.app.export."""
import sys

from gls.app.export import main

if __name__ == "__main__":
    sys.exit(main())
