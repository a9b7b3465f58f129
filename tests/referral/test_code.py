"""The Vermittlungscode: alphabet, length, randomness without collisions, normalisation and display."""

from __future__ import annotations

import pytest

from terminhub.fhir.outcome import FhirError
from terminhub.referral.code import ALPHABET, LENGTH, display, generate, normalise


def test_a_hundred_thousand_codes_are_unique_well_formed_and_avoid_look_alikes() -> None:
    codes = [generate() for _ in range(100_000)]
    assert len(set(codes)) == len(codes)
    assert all(len(code) == LENGTH and set(code) <= set(ALPHABET) for code in codes)
    assert not set("".join(codes)) & set("O0I1E3")
    assert set("".join(codes)) == set(ALPHABET)  # every character is used


def test_the_alphabet_is_a_to_z_and_digits_without_o_zero_i_one_e_three() -> None:
    expected = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") - set("O0I1E3")
    assert set(ALPHABET) == expected
    assert len(ALPHABET) == len(expected)


@pytest.mark.parametrize("raw", ["XN6P-F4HP-Z5KX", "xn6pf4hpz5kx", "  XN6PF4HPZ5KX ", "xn6p-f4hp-z5kx"])
def test_input_is_normalised_before_it_is_checked(raw: str) -> None:
    assert normalise(raw) == "XN6PF4HPZ5KX"


@pytest.mark.parametrize(
    "raw", ["XN6PF4HPZ5K", "XN6PF4HPZ5KXA", "XN6PF4HPZ5K0", "XN6PF4HPZ5KÄ", "", "XN6P F4HP Z5KX"]
)
def test_anything_else_is_code_malformed(raw: str) -> None:
    with pytest.raises(FhirError) as refused:
        normalise(raw)
    assert (refused.value.code, refused.value.status) == ("code-malformed", 400)


def test_referrers_see_the_code_in_groups_of_four() -> None:
    assert display("XN6PF4HPZ5KX") == "XN6P-F4HP-Z5KX"
