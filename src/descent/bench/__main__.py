"""``python -m descent.bench``."""

from .run import main

raise SystemExit(main())
