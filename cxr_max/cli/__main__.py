"""``python -m cxr_max.cli`` is ``cxr-max``."""

from cxr_max.cli.main import main

raise SystemExit(main())
