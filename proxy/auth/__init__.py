"""Authentication and SMART authorization: tokens, principals, scopes."""

__all__: list[str] = []
