"""The directory part of a demo practice: Organization, Location, HealthcareService, Practitioners,
PractitionerRoles and Schedules (Terminprofile), shaped as the KBV TVS guide and the contract (3.1) expect."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from terminhub.demo.names import ANR_SYSTEM, BSNR_SYSTEM, FACHGEBIET_SYSTEM
from terminhub.demo.plan import DemoSettings, DoctorPlan, PracticePlan
from terminhub.demo.slots import local

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EGK = "Bitte bringen Sie Ihre elektronische Gesundheitskarte mit."


def directory_count(practice: PracticePlan) -> int:
    """How many resources `directory()` yields for this practice."""
    return 4 + 3 * len(practice.doctors)


def directory(practice: PracticePlan, settings: DemoSettings) -> Iterator[dict]:
    """Yield the practice's resources, each after those it references."""
    key = practice.key
    org, loc = f"Organization/org-{key}", f"Location/loc-{key}"
    phone = [{"system": "phone", "value": practice.phone, "use": "work"}]
    yield {
        "resourceType": "Organization",
        "id": f"org-{key}",
        "identifier": [{"system": BSNR_SYSTEM, "value": practice.bsnr}],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": practice.name,
        "telecom": phone,
        "address": [_address(practice)],
    }
    yield {
        "resourceType": "Location",
        "id": f"loc-{key}",
        "status": "active",
        "name": practice.name,
        "mode": "instance",
        "telecom": phone,
        "address": _address(practice),
        "position": {"longitude": practice.lon, "latitude": practice.lat},
        "managingOrganization": {"reference": org},
    }
    yield {
        "resourceType": "HealthcareService",
        "id": f"hs-{key}",
        "active": True,
        "providedBy": {"reference": org, "display": practice.name},
        "type": [_fachgebiet(practice)],
        "specialty": [_fachgebiet(practice)],
        "location": [{"reference": loc}],
        "name": practice.fachgebiet.service,
        "telecom": phone,
        "appointmentRequired": True,
        "availableTime": _available_time(practice.doctors),
    }
    # One role for the practice itself, without a practitioner, as the KBV TVS guide has it.
    yield _role(practice, f"role-{key}-praxis", None)
    for doctor in practice.doctors:
        yield {
            "resourceType": "Practitioner",
            "id": f"pract-{key}-{doctor.number}",
            "identifier": [{"system": ANR_SYSTEM, "value": doctor.anr}],
            "active": True,
            "name": [
                {"use": "official", "family": doctor.family, "given": [doctor.given]}
                | ({"prefix": ["Dr. med."]} if doctor.doctor else {})
            ],
            "gender": doctor.gender,
        }
        yield _role(practice, f"role-{key}-{doctor.number}", doctor)
        yield _schedule(practice, doctor, settings)


def _schedule(practice: PracticePlan, doctor: DoctorPlan, settings: DemoSettings) -> dict:
    """A Terminprofil: its fields (name, default length, restrictions) live in extensions (contract 3.1)."""
    extensions: list[dict] = [
        {"url": "urn:terminhub:schedule-name", "valueString": f"{doctor.schedule_name} – {doctor.display}"},
        {"url": "urn:terminhub:default-slot-minutes", "valuePositiveInt": doctor.slot_minutes},
    ]
    comment = _EGK
    if doctor.requires_confirmation:
        extensions.append({"url": "urn:terminhub:requires-confirmation", "valueBoolean": True})
        comment += " Die Praxis bestätigt Ihren Termin innerhalb von zwei Werktagen."
    extensions += [{"url": "urn:terminhub:bookable-by", "valueCode": face} for face in doctor.bookable_by]
    if doctor.video_weekday is not None:
        comment += " Für Videosprechstunden erhalten Sie den Zugangslink nach der Buchung."
    start = settings.start
    return {
        "resourceType": "Schedule",
        "id": f"sched-{practice.key}-{doctor.number}",
        "extension": extensions,
        "active": True,
        "serviceType": [_fachgebiet(practice)],
        "specialty": [_fachgebiet(practice)],
        "actor": [
            {"reference": f"PractitionerRole/role-{practice.key}-{doctor.number}", "display": doctor.display},
            {"reference": f"Location/loc-{practice.key}"},
        ],
        "planningHorizon": {
            "start": local(start, 0).isoformat(),
            "end": local(start + datetime.timedelta(days=settings.days), 0).isoformat(),
        },
        "comment": comment,
    }


def _role(practice: PracticePlan, role_id: str, doctor: DoctorPlan | None) -> dict:
    role: dict = {"resourceType": "PractitionerRole", "id": role_id, "active": True}
    if doctor is not None:
        role["practitioner"] = {
            "reference": f"Practitioner/pract-{practice.key}-{doctor.number}",
            "display": doctor.display,
        }
    role |= {
        "organization": {
            "reference": f"Organization/org-{practice.key}",
            "identifier": {"system": BSNR_SYSTEM, "value": practice.bsnr},
            "display": practice.name,
        },
        "location": [{"reference": f"Location/loc-{practice.key}"}],
        "healthcareService": [{"reference": f"HealthcareService/hs-{practice.key}"}],
        "specialty": [_fachgebiet(practice)],
    }
    return role


def _fachgebiet(practice: PracticePlan) -> dict:
    """A fresh CodeableConcept each time, so that a consumer editing one resource edits no other."""
    fach = practice.fachgebiet
    return {"coding": [{"system": FACHGEBIET_SYSTEM, "code": fach.code, "display": fach.display}]}


def _address(practice: PracticePlan) -> dict:
    return {
        "use": "work",
        "type": "both",
        "line": [practice.street],
        "city": practice.city.name,
        "postalCode": practice.postal_code,
        "country": "DE",
    }


def _available_time(doctors: tuple[DoctorPlan, ...]) -> list[dict]:
    """Opening hours of the practice: each consultation window with the weekdays anyone holds it."""
    days_by_window: dict[tuple[int, int], set[int]] = {}
    for doctor in doctors:
        for weekday, windows in enumerate(doctor.week):
            for window in windows:
                days_by_window.setdefault(window, set()).add(weekday)
    return [
        {
            "daysOfWeek": [_DAYS[d] for d in sorted(days)],
            "availableStartTime": f"{start // 60:02d}:{start % 60:02d}:00",
            "availableEndTime": f"{end // 60:02d}:{end % 60:02d}:00",
        }
        for (start, end), days in sorted(days_by_window.items())
    ]
