"""The FHIR wire: JSON and XML, Bundle and OperationOutcome, search parameters, CapabilityStatement."""
