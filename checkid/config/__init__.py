"""Configuration: one TOML file, every key with a built-in default (see :mod:`schema`)."""
from checkid.config.schema import *  # noqa: F401,F403
from checkid.config.schema import load, from_dict, parse_listen, parse_hostport  # noqa: F401
