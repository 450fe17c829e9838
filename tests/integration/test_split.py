"""The split through a real proxy: share, stickiness, monotonicity, segments."""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.routing import bucket, threshold
from tests.support.configs import route_yaml
from tests.support.upstream import url_of

USERS = 10_000


async def variants_of(
    client: aiohttp.ClientSession,
    base: str,
    users: list[str],
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """The variant each user gets, asking with up to 64 requests in flight."""
    limit = asyncio.Semaphore(64)
    found: dict[str, str] = {}

    async def ask(uid: str) -> None:
        async with (
            limit,
            client.get(f"{base}/v1/predict", headers={"X-User-Id": uid, **(headers or {})}) as resp,
        ):
            body = await resp.json()
            assert resp.status == 200
            assert body["upstream"] == resp.headers["X-Grayscale-Variant"]
            found[uid] = body["upstream"]

    await asyncio.gather(*(ask(uid) for uid in users))
    return found


async def test_split_over_10000_users_matches_share_and_bucket_rule(upstreams, start_proxy, client):
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), share=0.3))
    users = [f"user-{i}" for i in range(USERS)]
    found = await variants_of(client, proxy.proxy_url, users)
    share = sum(v == "candidate" for v in found.values()) / USERS
    assert abs(share - 0.3) <= 0.01
    # Every single user went exactly where the documented rule says.
    for uid, variant in found.items():
        expected = "candidate" if bucket("models-salt", uid) < threshold(0.3) else "stable"
        assert variant == expected, uid


async def test_same_user_gets_same_variant_every_time(proxy, client):
    users = [f"sticky-{i}" for i in range(50)]
    first = await variants_of(client, proxy.proxy_url, users)
    for _ in range(5):
        assert await variants_of(client, proxy.proxy_url, users) == first
    assert set(first.values()) == {"stable", "candidate"}


async def test_raising_the_share_never_moves_a_user_back_to_stable(upstreams, start_proxy, client):
    stable, candidate = upstreams
    users = [f"user-{i}" for i in range(1000)]
    seen: set[str] = set()
    for share in (0.05, 0.2, 0.5, 0.9):
        proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), share=share))
        found = await variants_of(client, proxy.proxy_url, users)
        now_candidate = {u for u, v in found.items() if v == "candidate"}
        assert seen <= now_candidate
        assert len(now_candidate) > len(seen)
        seen = now_candidate


async def test_cookie_key_and_missing_key(proxy, client):
    base = proxy.proxy_url
    for uid in ("alice", "bob", "carol", "dave", "erin", "frank"):
        async with client.get(f"{base}/x", headers={"X-User-Id": uid}) as by_header:
            variant = by_header.headers["X-Grayscale-Variant"]
        async with client.get(f"{base}/x", headers={"Cookie": f"uid={uid}"}) as by_cookie:
            assert by_cookie.headers["X-Grayscale-Variant"] == variant
    for _ in range(20):  # no key: stable by default
        async with client.get(f"{base}/x", headers={"X-User-Id": ""}) as resp:
            assert resp.headers["X-Grayscale-Variant"] == "stable"


async def test_segment_pin_wins_over_share(upstreams, start_proxy, client):
    stable, candidate = upstreams
    segments = (
        "    segments:\n"
        '      - {name: staff, when: {"header:X-User-Group": [staff]}, variant: candidate}\n'
        "      - {name: blocked, when: {user_id: [user-1, user-2]}, variant: stable}\n"
        '      - {name: eu, when: {"header:X-Region": [eu-west-1]}, ramp: {base: 1.0}}\n'
    )
    proxy = await start_proxy(
        route_yaml(url_of(stable), url_of(candidate), share=0.0, extra=segments)
    )
    users = [f"user-{i}" for i in range(200)]
    staff = await variants_of(client, proxy.proxy_url, users, {"X-User-Group": "staff"})
    assert set(staff.values()) == {"candidate"}
    eu = await variants_of(client, proxy.proxy_url, users, {"X-Region": "eu-west-1"})
    assert {u for u, v in eu.items() if v == "stable"} == {"user-1", "user-2"}
    rest = await variants_of(client, proxy.proxy_url, users)
    assert set(rest.values()) == {"stable"}


async def test_client_ip_segment_believes_only_trusted_proxies(upstreams, start_proxy, client):
    stable, candidate = upstreams
    office = (
        "    segments:\n"
        '      - {name: office, when: {client_ip: ["198.51.100.0/24"]}, variant: candidate}\n'
    )
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.0, extra=office)
    behind_lb = await start_proxy(routes, ', trusted_proxies: ["127.0.0.0/8"]')
    exposed = await start_proxy(routes)
    spoofed = {"X-Forwarded-For": "198.51.100.7"}
    for proxy, headers, expected in (
        (behind_lb, spoofed, "candidate"),
        (behind_lb, {}, "stable"),
        (behind_lb, {"X-Forwarded-For": "203.0.113.1"}, "stable"),
        (exposed, spoofed, "stable"),  # an untrusted peer cannot claim an address
    ):
        async with client.get(proxy.proxy_url + "/x", headers=headers) as resp:
            assert resp.headers["X-Grayscale-Variant"] == expected, (proxy, headers)


async def test_a_user_keyed_by_cookie_stays_sticky_beside_odd_cookies(
    upstreams, start_proxy, client
):
    """Real browsers send analytics and JSON cookies beside the one that keys the user."""
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), share=0.5))
    users = [f"cookie-user-{i}" for i in range(40)]
    for uid in users:
        cookie = f'_ga=GA1.2.3.4; prefs={{"theme":"dark","tabs":[1,2]}}; uid={uid}; x'
        async with client.get(f"{proxy.proxy_url}/v1/p", headers={"Cookie": cookie}) as resp:
            expected = "candidate" if bucket("models-salt", uid) < threshold(0.5) else "stable"
            assert resp.headers["X-Grayscale-Variant"] == expected, uid
