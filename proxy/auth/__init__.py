"""Authentication and SMART authorization: tokens, principals, scopes, discovery, the development issuer."""

from proxy.auth.authenticator import Authenticator, bearer_token, build_authenticator
from proxy.auth.principal import Principal
from proxy.auth.scopes import ResourceScope, ScopeSet, parse_scope, parse_scopes

__all__ = [
    "Authenticator",
    "Principal",
    "ResourceScope",
    "ScopeSet",
    "bearer_token",
    "build_authenticator",
    "parse_scope",
    "parse_scopes",
]
