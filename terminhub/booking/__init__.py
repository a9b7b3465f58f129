"""The booking core: slot states, holds, booking, cancellation, postponement — FHIR scheduling only, no
HTTP and no country's words. Every face books through it."""
