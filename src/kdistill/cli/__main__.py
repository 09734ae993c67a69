"""`python -m kdistill.cli ...` (what torchrun and accelerate launch start)."""

from kdistill.cli.app import main

main()
