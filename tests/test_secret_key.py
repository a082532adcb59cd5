"""The key that signs dashboard sessions (issue 16 B): values anyone could know are refused
with a message that names the variable; `up`'s own key is made once, kept private, reused."""

from __future__ import annotations

import pytest

from app.secret_key import InsecureSecretKey, checked, local_secret_key, weakness


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "is not set"),
        ("", "is not set"),
        ("dev-insecure-secret-change-me", "looks like a placeholder (it contains 'change')"),
        ("change-me-to-a-long-random-string", "looks like a placeholder (it contains 'change')"),
        (
            "my-production-secret-2026-abcdefghijkl",
            "looks like a placeholder (it contains 'secret')",
        ),
        ("0123456789abcdefghijklmnopqrstu", "is too short (31 characters; at least 32)"),
        ("abcabcabcabcabcabcabcabcabcabcabcabc", "is too repetitive (fewer than 10 distinct"),
    ],
)
def test_a_key_anyone_could_guess_is_refused_and_the_variable_named(value, problem):
    assert weakness(value).startswith(problem)
    with pytest.raises(InsecureSecretKey, match=f"^ROUTELEDGER_SECRET_KEY {problem[:8]}"):
        checked(value)


def test_a_long_random_key_is_accepted():
    value = "3f9c1e0b7a5d4c2b8e6f1a0d9c8b7a6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a"
    assert checked(value) == value


def test_ups_key_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "data" / "secret_key"
    made = local_secret_key(path)
    assert weakness(made) is None
    assert path.stat().st_mode & 0o777 == 0o600
    assert local_secret_key(path) == made
    path.chmod(0o644)  # copied with a looser mode
    assert local_secret_key(path) == made
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret_key"]


def test_a_weak_key_in_the_data_folder_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text("change-me\n")
    with pytest.raises(InsecureSecretKey, match=f"^{path} looks like a placeholder"):
        local_secret_key(path)
