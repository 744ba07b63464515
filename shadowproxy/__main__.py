"""``python -m shadowproxy`` is the same program as the ``shadowproxy`` console script."""

from shadowproxy.cli import main

raise SystemExit(main())
