"""Settings from flags and TERMINHUB_* environment variables (one object, passed everywhere)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REFERRAL_FREE = ",".join(
    [
        "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB|05",
        "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB|09",
        "urn:terminhub:leistungsmerkmal|pt-akutbehandlung",
    ]
)


class Settings(BaseSettings):
    """Every knob of the contract's section 1; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="TERMINHUB_", extra="ignore")

    database_url: str = "sqlite:///var/terminhub.db"
    base_url: str = "http://127.0.0.1:8080"
    secret_key: str | None = None
    token_minutes: float = 15
    hold_minutes: float = 10
    max_holds: int = 5
    provenance_min_interval_s: float = 300
    provenance_retention_days: float = 90
    confirm_hours: float = 48
    timezone: str = "Europe/Berlin"
    system_name: str = "116117 Terminservice"
    referral_free: str = DEFAULT_REFERRAL_FREE
    acute_pt_codings: str = "urn:terminhub:leistungsmerkmal|pt-akutbehandlung"
    codes_per_day: int = 10000
    test_clock: bool = False
    sweep_interval_s: float = Field(default=30, description="seconds between sweeps (at most 60)")
    client_recheck_s: float = 60
    # request threads, each with a pooled connection, per process (terminhub/store/database.py: why two)
    request_threads: int = Field(default=2, ge=1)

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"
