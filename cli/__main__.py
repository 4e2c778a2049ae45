"""`python -m sniinspect`."""

from sniinspect.main import main

main()
