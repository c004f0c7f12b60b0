"""fhirwall: a fail-closed FHIR compliance proxy."""

from proxy.app import create_app
from proxy.errors import ProxyError
from proxy.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "ProxyError", "Settings", "create_app", "load_settings"]
__version__ = "0.1.0"
