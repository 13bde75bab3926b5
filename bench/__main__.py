"""``python -m bench``: run the whole benchmark once and print the figures."""

from bench.run import main

main()
