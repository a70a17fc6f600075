"""Login throttling: failed logins per user and source address, and per source address,
counted in DynamoDB; password hashes at OWASP's scrypt cost, upgraded at login."""

import json

import pytest

from chalicelib import services
from chalicelib.auth.logins import SCRYPT_N, Authenticator, LoginThrottle, hash_password
from chalicelib.common import aws
from chalicelib.common.config import Settings
from chalicelib.common.errors import TooManyFailures, Unauthenticated
from tests.conftest import basic

COUNT = "/_notebooks/notebooks/_count"
ATTEMPTS, WINDOW, SOURCE_ATTEMPTS = 5, 300.0, 12
HOME, ELSEWHERE = "198.51.100.7", "203.0.113.9"


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock(stack):
    clock = Clock(1_800_000_000.0)
    throttle = LoginThrottle(
        aws.dynamodb_table(stack.settings.users_table, stack.settings.region),
        ATTEMPTS,
        WINDOW,
        SOURCE_ATTEMPTS,
        clock=clock,
    )
    stack.authenticator._throttle = throttle
    return clock


def login(api, user, password, source=HOME):
    """A request as API Gateway hands it over: the proxy event's identity.sourceIp is `source`."""
    api._client.http._local_gateway.event_converter.LOCAL_SOURCE_IP = source
    return api._client.http.request("GET", COUNT, headers={"Authorization": basic(user, password)})


def stored_keys(stack) -> list:
    return sorted(
        item["username"]
        for item in aws.dynamodb_table(stack.settings.users_table, stack.settings.region).scan()["Items"]
    )


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


def test_a_lockout_from_another_source_does_not_lock_the_user_out_at_home(api, clock):
    for _ in range(ATTEMPTS + 3):
        login(api, "bob", "guess", source=ELSEWHERE)
    assert login(api, "bob", "bob-secret", source=ELSEWHERE).status_code == 429
    forget_verified_logins()
    assert login(api, "bob", "bob-secret", source=HOME).status_code == 200
    assert login(api, "bob", "guess", source=HOME).status_code == 401  # its own budget, untouched


def test_spraying_many_users_from_one_source_is_stopped_there_only(api, stack, clock):
    stack.users.add("carol", "carol-secret")
    stack.users.add("dave", "dave-secret")
    statuses = []
    for round_ in range(4):  # under each user's own limit, but SOURCE_ATTEMPTS in all
        for user in ("admin", "bob", "carol", "dave"):
            statuses.append(login(api, user, f"password{round_}", source=ELSEWHERE).status_code)
    assert statuses[:SOURCE_ATTEMPTS] == [401] * SOURCE_ATTEMPTS and set(statuses[SOURCE_ATTEMPTS:]) == {429}
    status, body, retry_after = answer(login(api, "carol", "carol-secret", source=ELSEWHERE))
    assert status == 429 and "Too many failed logins" in body["error"]["message"] and int(retry_after) == WINDOW
    assert login(api, "carol", "carol-secret", source=HOME).status_code == 200


def test_nothing_is_written_for_a_name_that_is_not_a_user(api, stack, clock):
    before = stored_keys(stack)
    for name in ["nobody", "x" * 64, "y" * 300, "has#hash"]:
        for _ in range(ATTEMPTS + 2):
            status, body, _ = answer(login(api, name, "guess"))
            assert status == 401 and body == {"error": {"status": 401, "message": body["error"]["message"]}}
    assert stored_keys(stack) == before == ["admin", "bob"]
    assert answer(login(api, "nobody", "guess")) == answer(login(api, "bob", "guess"))  # the same 401


def test_an_unknown_name_is_refused_once_its_source_is_locked(api, stack, clock):
    stack.users.add("carol", "carol-secret")
    for attempt in range(SOURCE_ATTEMPTS):  # 4 each: under each user's own limit
        assert login(api, ("admin", "bob", "carol")[attempt % 3], "guess", source=ELSEWHERE).status_code == 401
    assert login(api, "nobody", "guess", source=ELSEWHERE).status_code == 429
    assert login(api, "nobody", "guess", source=HOME).status_code == 401


def test_new_hashes_use_owasps_scrypt_cost_by_default():
    assert Settings().password_scrypt_n == SCRYPT_N == 2**17
    scheme, n, r, p, *_ = hash_password("pw").split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**17, 8, 1)


def test_a_weaker_hash_is_upgraded_at_the_next_successful_login_only(api, stack, clock):
    table = aws.dynamodb_table(stack.settings.users_table, stack.settings.region)
    old = hash_password("bob-secret", n=stack.settings.password_scrypt_n // 4)
    table.put_item(Item={"username": "bob", "password_hash": old})
    assert login(api, "bob", "guess").status_code == 401
    assert stack.users.password_hash("bob") == old  # a wrong password upgrades nothing
    assert login(api, "bob", "bob-secret").status_code == 200
    upgraded = stack.users.password_hash("bob")
    assert upgraded != old and upgraded.split("$")[1:4] == [str(stack.settings.password_scrypt_n), "8", "1"]
    forget_verified_logins()
    assert login(api, "bob", "bob-secret").status_code == 200
    assert stack.users.password_hash("bob") == upgraded  # upgraded once


def test_an_upgrade_never_overwrites_a_password_changed_meanwhile(stack):
    old = hash_password("first", n=2**10)
    stack.users.add("erin", "second")
    changed = stack.users.password_hash("erin")
    assert stack.users.upgrade_hash("erin", "first", old) == old
    assert stack.users.password_hash("erin") == changed


def test_the_count_holds_across_containers(stack, clock):
    """Two authenticators (two Lambda containers) share the count through DynamoDB."""
    table = aws.dynamodb_table(stack.settings.users_table, stack.settings.region)
    first, second = (
        Authenticator(stack.users, throttle=LoginThrottle(table, ATTEMPTS, WINDOW, clock=clock)) for _ in range(2)
    )
    for attempt in range(ATTEMPTS):
        with pytest.raises(Unauthenticated):
            (first if attempt % 2 else second).authenticate(basic("bob", "guess"))
    with pytest.raises(TooManyFailures):
        first.authenticate(basic("bob", "bob-secret"))
    assert stack.users.names() == ["admin", "bob"]  # the counts are not users


def test_a_burst_of_right_passwords_from_cold_containers_is_never_refused(stack, clock):
    """Twenty fresh containers at once, after failures that used up all but one attempt."""
    from concurrent.futures import ThreadPoolExecutor

    table = aws.dynamodb_table(stack.settings.users_table, stack.settings.region)
    throttle = LoginThrottle(table, ATTEMPTS, WINDOW, clock=clock)
    for _ in range(ATTEMPTS - 1):
        with pytest.raises(Unauthenticated):
            Authenticator(stack.users, throttle=throttle).authenticate(basic("bob", "guess"))

    def cold_login(_):
        return Authenticator(stack.users, throttle=throttle).authenticate(basic("bob", "bob-secret"))

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(cold_login, range(20))) == ["bob"] * 20
