"""``python -m colorquant``."""

from .cli import main

main()
