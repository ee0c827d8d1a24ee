"""`python -m bench`: run the benchmark (see bench.command for the options)."""

from bench.command import main

raise SystemExit(main())
