"""terminhub: an appointment-booking hub for healthcare, served as FHIR R4."""

__version__ = "0.1.0"
