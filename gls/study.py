"""``python -m gls.study``: the study command (``python -m gls.study paradox ...``); its code lives in
gls.app.study (the command line in gls.app.study.cli)."""
import sys

from gls.app.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
