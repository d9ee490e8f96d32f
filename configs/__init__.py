# Makes configs/ a package (circuitfind.configs) so that installs ship it; see pyproject.toml.
