"""Errors as OperationOutcomes: one exception type carries the contract's code, status and text."""

from __future__ import annotations

ERROR_SYSTEM = "urn:terminhub:error"

# contract code -> (HTTP status, R4 issue.code)
ERRORS: dict[str, tuple[int, str]] = {
    "invalid": (400, "invalid"),
    "unauthorized": (401, "login"),
    "forbidden": (403, "forbidden"),
    "not-found": (404, "not-found"),
    "method-not-allowed": (405, "not-supported"),
    "not-acceptable": (406, "not-supported"),
    "unsupported-media-type": (415, "not-supported"),
    "gone": (410, "deleted"),
    "version-conflict": (412, "conflict"),
    "too-large": (413, "too-costly"),
    "business-rule": (422, "business-rule"),
    "slot-unavailable": (409, "conflict"),
    "slot-not-matching": (422, "business-rule"),
    "conflict": (409, "conflict"),
    "code-malformed": (400, "invalid"),
    "code-unknown": (404, "not-found"),
    "code-status": (409, "conflict"),
    "code-expired": (409, "expired"),
    "urgency-not-allowed": (422, "business-rule"),
    "feed-expired": (422, "business-rule"),
    "poll-too-frequent": (429, "throttled"),
    "rate-limited": (429, "throttled"),
    "internal": (500, "exception"),
}


class FhirError(Exception):
    """A refusal: rendered as an OperationOutcome with the contract's status and code."""

    def __init__(
        self,
        code: str,
        text: str,
        *,
        diagnostics: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        issue_code: str | None = None,
    ) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.diagnostics = diagnostics
        default_status, default_issue = ERRORS[code]
        self.status = status or default_status
        self.issue_code = issue_code or default_issue
        self.headers = headers or {}

    def outcome(self) -> dict:
        return operation_outcome(
            self.code, self.text, status=self.status, diagnostics=self.diagnostics, issue_code=self.issue_code
        )


def operation_outcome(
    code: str,
    text: str,
    *,
    status: int = 400,
    diagnostics: str | None = None,
    issue_code: str | None = None,
    severity: str | None = None,
) -> dict:
    issue: dict = {
        "severity": severity or ("fatal" if status >= 500 else "error"),
        "code": issue_code or ERRORS.get(code, (status, "processing"))[1],
        "details": {"coding": [{"system": ERROR_SYSTEM, "code": code}], "text": text},
    }
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def information(text: str) -> dict:
    """An OperationOutcome that reports success (for `Prefer: return=OperationOutcome` and operations)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "details": {"text": text}}],
    }
