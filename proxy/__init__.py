"""fhirwall: a fail-closed FHIR compliance proxy."""

from typing import Any

from proxy.errors import ProxyError
from proxy.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "ProxyError", "Settings", "create_app", "load_settings"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # create_app pulls in the whole application; importing it lazily keeps `import proxy.errors` (used by the
    # consent package, which the application itself imports) free of import cycles.
    if name == "create_app":
        from proxy.app import create_app

        return create_app
    raise AttributeError(name)
