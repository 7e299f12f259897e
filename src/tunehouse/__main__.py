"""``python -m tunehouse``."""

from tunehouse.cli import main

main()
