"""Lets `python -m fastmta` run the command line."""

from fastmta.cli import main

raise SystemExit(main())
