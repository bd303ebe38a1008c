"""``python -m gls.certify``: the evaluation command; its code lives in gls.app.certify."""
import sys

from gls.app.certify import main

if __name__ == "__main__":
    sys.exit(main())
