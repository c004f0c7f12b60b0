"""Patient consent: FHIR Consent parsing, evaluation and stores (built in the consent milestone)."""

__all__: list[str] = []
