"""Profile-based masking and pseudonymization (built in the masking milestone)."""

__all__: list[str] = []
