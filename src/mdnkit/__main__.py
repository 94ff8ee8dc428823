"""``python -m mdnkit``: the ``mdnkit`` command (so that ``torchrun ... -m mdnkit fit ...``
works).

Example:
    >>> from mdnkit.cli import main  # what ``python -m mdnkit`` runs
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
