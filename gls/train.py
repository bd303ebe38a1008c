"""``python -m gls.train``: the training command (``torchrun ... -m gls.train`` too); its code lives in
gls.app.train."""
import sys

from gls.app.train import main

if __name__ == "__main__":
    sys.exit(main())
