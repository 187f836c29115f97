"""The `jego` console script and its subcommands."""
