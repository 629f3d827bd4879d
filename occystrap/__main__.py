"""Allow ``python -m occystrap``."""

from occystrap.cli import main

main()
