"""`python -m notebooks_client`: the `notebooks` command."""

from .cli import main

raise SystemExit(main())
