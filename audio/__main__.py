"""`python -m audio` → audio.cli (see there)."""

from .cli import main

raise SystemExit(main())
