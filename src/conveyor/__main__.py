"""``python -m conveyor``: the same program as the ``conveyor`` command."""

from conveyor.cli.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
