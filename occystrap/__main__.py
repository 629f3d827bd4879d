"""Allow ``python -m occystrap``."""

from occystrap.cli import main

# Guarded: worker processes (spawned for --expand) import this module too.
if __name__ == "__main__":
    main()
