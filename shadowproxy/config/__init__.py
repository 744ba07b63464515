"""The configuration: typed frozen dataclasses, and the loader that validates YAML into them."""

from shadowproxy.config.loader import config_from_dict, load_config, redacted_config
from shadowproxy.config.model import Config

__all__ = ["Config", "config_from_dict", "load_config", "redacted_config"]
