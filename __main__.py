"""`python -m chatledger`: the admin CLI."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="chatledger")
