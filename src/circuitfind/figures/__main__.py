"""``python -m circuitfind.figures NAME ...``: see ``figures.build.main``."""

from .build import main

main()
