"""One torch-free module per method: its parameters (a checked dataclass) and its ``MethodSpec``.

``spec.load_specs`` imports every module here, so a new method registers by adding one."""
