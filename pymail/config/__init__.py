"""pymail's configuration: one typed schema for the TOML file, and its loader.

`load_config(path)` returns a validated `Config` or raises `ConfigError` whose message is
one line naming the key and the problem (the CLI prints it and exits 1).  With no file,
the result is the *embedded default* (docs/INTERFACE.md): data in `./pymail-data` (or
`$PYMAIL_DATA`), SQLite index and file blobs there, every listener on 127.0.0.1 on an
unprivileged port.
"""

from pymail.config.loader import ConfigError, config_as_toml, load_config
from pymail.config.schema import Config

__all__ = ["Config", "ConfigError", "config_as_toml", "load_config"]
