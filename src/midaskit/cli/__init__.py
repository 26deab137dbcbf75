"""The ``midaskit`` command line: one module per subcommand with ``add_parser`` and ``run``."""
