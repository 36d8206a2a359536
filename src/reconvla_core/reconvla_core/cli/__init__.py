"""The ``reconvla`` command line (see main.py for the conventions every subcommand follows)."""
