"""Login throttling: failed logins per username, counted in DynamoDB."""

import json

import pytest

from chalicelib import services
from chalicelib.api.errors import ApiError
from chalicelib.auth.logins import Authenticator, LoginThrottle
from chalicelib.common import aws
from tests.conftest import basic

COUNT = "/_notebooks/notebooks/_count"
ATTEMPTS, WINDOW = 5, 300.0


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock(stack):
    clock = Clock(1_800_000_000.0)
    throttle = LoginThrottle(
        aws.dynamodb_table(stack.settings.users_table, stack.settings.region), ATTEMPTS, WINDOW, clock=clock
    )
    stack.authenticator._throttle = throttle
    return clock


def login(api, user, password):
    return api._client.http.request("GET", COUNT, headers={"Authorization": basic(user, password)})


def answer(response):
    return response.status_code, json.loads(response.body), response.headers.get("Retry-After")


def test_failed_logins_past_the_limit_are_429_with_retry_after_even_for_the_right_password(api, clock):
    for _ in range(ATTEMPTS):
        assert login(api, "bob", "guess").status_code == 401
    status, body, retry_after = answer(login(api, "bob", "bob-secret"))
    assert status == 429 and body == {"error": {"status": 429, "message": body["error"]["message"]}}
    assert "Too many failed logins" in body["error"]["message"] and int(retry_after) == WINDOW
    assert login(api, "admin", "admin").status_code == 200  # another user is not affected
    clock.now += 100
    assert int(login(api, "bob", "guess").headers["Retry-After"]) == WINDOW - 100


def test_a_login_verified_a_moment_ago_is_refused_too_while_locked(api, clock):
    """Else a guess hitting the password the user just used would pass, from its cache."""
    assert login(api, "bob", "bob-secret").status_code == 200
    for _ in range(ATTEMPTS):
        assert login(api, "bob", "guess").status_code == 401
    assert login(api, "bob", "bob-secret").status_code == 429
    clock.now += WINDOW
    assert login(api, "bob", "bob-secret").status_code == 200


def test_the_right_user_is_not_locked_out_longer_than_the_window(api, clock):
    for _ in range(ATTEMPTS):
        login(api, "bob", "guess")
    clock.now += WINDOW - 1
    assert login(api, "bob", "bob-secret").status_code == 429
    clock.now += 1
    assert login(api, "bob", "bob-secret").status_code == 200


def test_right_passwords_do_not_use_up_the_budget(api, clock):
    for _ in range(ATTEMPTS - 1):
        assert login(api, "bob", "guess").status_code == 401
        clock.now += 0.001
    for _ in range(3):
        forget_verified_logins()  # each right password pays its check, as in a fresh container
        assert login(api, "bob", "bob-secret").status_code == 200
    assert login(api, "bob", "guess").status_code == 401  # the last failure of the budget
    assert login(api, "bob", "guess").status_code == 429


def forget_verified_logins():
    services.get().authenticator._verified.clear()


def test_an_unknown_user_is_answered_exactly_like_a_known_one(api, clock):
    known = [answer(login(api, "bob", "guess")) for _ in range(ATTEMPTS + 2)]
    unknown = [answer(login(api, "nobody", "guess")) for _ in range(ATTEMPTS + 2)]
    assert known == unknown
    assert [status for status, _, _ in known] == [401] * ATTEMPTS + [429, 429]


def test_the_count_holds_across_containers(stack, clock):
    """Two authenticators (two Lambda containers) share the count through DynamoDB."""
    table = aws.dynamodb_table(stack.settings.users_table, stack.settings.region)
    first, second = (
        Authenticator(stack.users, throttle=LoginThrottle(table, ATTEMPTS, WINDOW, clock=clock)) for _ in range(2)
    )
    for attempt in range(ATTEMPTS):
        with pytest.raises(Exception) as raised:
            (first if attempt % 2 else second).authenticate(basic("bob", "guess"))
        assert raised.value.status == 401
    with pytest.raises(Exception) as raised:
        first.authenticate(basic("bob", "bob-secret"))
    assert raised.value.status == 429
    assert stack.users.names() == ["admin", "bob"]  # the counts are not users


def test_a_burst_of_right_passwords_from_cold_containers_is_never_refused(stack, clock):
    """Twenty fresh containers at once, after failures that used up all but one attempt."""
    from concurrent.futures import ThreadPoolExecutor

    table = aws.dynamodb_table(stack.settings.users_table, stack.settings.region)
    throttle = LoginThrottle(table, ATTEMPTS, WINDOW, clock=clock)
    for _ in range(ATTEMPTS - 1):
        with pytest.raises(ApiError):
            Authenticator(stack.users, throttle=throttle).authenticate(basic("bob", "guess"))

    def cold_login(_):
        return Authenticator(stack.users, throttle=throttle).authenticate(basic("bob", "bob-secret"))

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(cold_login, range(20))) == ["bob"] * 20
