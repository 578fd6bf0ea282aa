"""The built-in ae-zoo architectures, installed as ``zoo_plugins``.

Each module is a plugin registered through the ``zoo`` entry-point group in
pyproject.toml, exactly as a third-party plugin would be.
"""
