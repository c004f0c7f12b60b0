"""Access policy: what a principal may do, decided as values and enforced by the pipeline."""

__all__: list[str] = []
