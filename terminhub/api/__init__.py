"""HTTP endpoints outside the FHIR base: authentication and discovery."""
