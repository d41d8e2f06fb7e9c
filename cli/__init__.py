"""The `simulate` command: the only package that parses arguments and prints; it imports the engine
packages (``simulator``, ``hwmodels``, ``search``, ``kernels``, ``reports``), none of which imports it."""
