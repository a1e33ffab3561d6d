"""`python -m facerest ...`: the same as the `facerest` command."""

from facerest.cli.main import main

main()
