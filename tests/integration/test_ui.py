"""The operator UI (/ui, server/http_ui.py) in a real browser against a real server with data.

Debian's chromium driven by Playwright (`executable_path=/usr/bin/chromium`: no browser
download). Every page must load with no console error and show the values the data implies; a
screenshot of each page goes to `build/ui-screenshots/` (git-ignored). With
`TESSERA_UI_DOCS=1` the feature groups and drift pages are also written to docs/ui-*.png
(README).
Without chromium the tests skip, but fail under CI (CI=true).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.server import http_auth, http_ui
from tessera.server.auth.keys import KeyStore
from tests.kafka_fixtures import KafkaBroker, session_broker
from tests.serverproc import ServerProcess

#: A JavaScript null or undefined rendered as text (a word of its own: a statistics table's
#: "nulls" column is not one).
_NOT_A_VALUE = re.compile(r"\b(null|undefined)\b")

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "ui-screenshots"
DAY_S = 86_400.0

USERS = "user_activity"
MERCHANTS = "merchant_risk"
VIEWS = "page_views"  # written by the server's own Kafka consumer
N_INGESTED = 12
N_WINDOW = 40  # records in each of the two windows of USERS

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the dev extra pins it; a bare install skips like a missing chromium
    sync_playwright = None  # type: ignore[assignment]


def _no_browser(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs chromium)")
    pytest.skip(reason)


@dataclass
class Served:
    proc: ServerProcess
    now_s: float
    topic: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.http_url


def _users_definition() -> dict[str, Any]:
    return {
        "feature_group_name": USERS,
        "record_identifier_feature_name": "user_id",
        "event_time_feature_name": "ts",
        "description": "Clicks and click-through rate per user",
        "feature_definitions": [
            {"feature_name": "user_id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "clicks", "feature_type": "Integral",
             "description": "clicks in the last session"},
            {"feature_name": "ctr", "feature_type": "Fractional",
             "description": "click-through rate"},
            {"feature_name": "country", "feature_type": "String"},
            {"feature_name": "pages", "feature_type": "String", "collection_type": "List"},
        ],
        "online_store_config": {"enable_online_store": True,
                                "ttl_duration": {"unit": "Days", "value": 30}},
    }


def _merchants_definition() -> dict[str, Any]:
    return {
        "feature_group_name": MERCHANTS,
        "record_identifier_feature_name": "merchant_id",
        "event_time_feature_name": "ts",
        "description": "Chargeback risk per merchant",
        "feature_definitions": [
            {"feature_name": "merchant_id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "risk", "feature_type": "Fractional"},
        ],
    }


def _views_definition() -> dict[str, Any]:
    return {
        "feature_group_name": VIEWS,
        "record_identifier_feature_name": "user_id",
        "event_time_feature_name": "ts",
        "description": "Page views, ingested from Kafka",
        "feature_definitions": [
            {"feature_name": "user_id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "views", "feature_type": "Integral"},
        ],
    }


def _user(i: int, now_s: float) -> dict[str, Any]:
    """Record i: the first N_WINDOW in the baseline window (9-12 days ago), the next N_WINDOW
    in the current one (1-3 days ago). clicks keeps its distribution; ctr and country shift."""
    current = i >= N_WINDOW
    j = i % N_WINDOW
    return {
        "user_id": f"u{i:03d}",
        "ts": now_s - (1 + 2 * j / N_WINDOW) * DAY_S - (0 if current else 8 * DAY_S),
        "clicks": j % 10,
        "ctr": (0.5 if current else 0.05) + 0.1 * j / N_WINDOW,
        "country": ("DE" if j % 2 else "FR") if current else ("US" if j % 2 else "GB"),
        "pages": [f"/p{k}" for k in range(j % 4)],  # lengths 0-3
    }


def _wait(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the offline store did not catch up")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def kafka() -> KafkaBroker:
    return session_broker()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, kafka: KafkaBroker) -> Iterator[Served]:
    """A server with two groups, 80 + 5 records flushed to Parquet (flush every 0.2 s), and a
    third fed by the server's own Kafka consumer: N_INGESTED records and one bad message."""
    topic = kafka.create_topic(kafka.unique("ui-views"), partitions=2)
    kafka.create_topic(f"{topic}.dlq")
    ingest = {"bootstrap_servers": kafka.bootstrap, "group_id": kafka.unique("ui"),
              "topics": [{"topic": topic, "feature_group": VIEWS}]}
    proc = ServerProcess(tmp_path_factory.mktemp("ui") / "data", extra_env={
        "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.2",
        "TESSERA_INGEST": json.dumps(ingest)}).start(timeout_s=90)
    now_s = time.time()
    s = Served(proc, now_s, topic)
    with httpx.Client(base_url=proc.http_url, timeout=10) as http:
        for body in (_users_definition(), _merchants_definition(), _views_definition()):
            assert http.post("/v1/feature-groups", json=body).status_code == 201
        kafka.produce(topic, [(None, json.dumps({"user_id": f"u{i}", "ts": now_s,
                                                  "views": i}).encode())
                              for i in range(N_INGESTED)] + [(None, b"{not json")])
        for i in range(2 * N_WINDOW):
            record = _user(i, now_s)
            s.users[record["user_id"]] = record
            assert http.put(f"/v1/feature-groups/{USERS}/records",
                            json={"record": record}).status_code == 200
        for i in range(5):
            record = {"merchant_id": f"m{i}", "ts": now_s - 3600 * i, "risk": i / 10}
            assert http.put(f"/v1/feature-groups/{MERCHANTS}/records",
                            json={"record": record}).status_code == 200

        def flushed() -> bool:
            groups = http.get("/v1/offline-store").json()["groups"]
            return bool(groups[USERS]["rows"] == 2 * N_WINDOW and groups[MERCHANTS]["rows"] == 5)

        _wait(flushed)
    yield s
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _no_browser("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _no_browser(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox"])  # root in CI containers
        yield b
        b.close()


@dataclass
class Tab:
    page: Page
    errors: list[str]

    def open(self, url: str, ready: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector(ready, timeout=15_000)

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    t = Tab(page, errors)
    yield t
    context.close()
    assert errors == [], f"console errors: {errors}"


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is missing"):
        _no_browser("chromium is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        _no_browser("chromium is missing")


def test_every_ui_asset_is_served_and_declared_open() -> None:
    """The HTTP edge checks exact paths: an asset missing from RULES would need credentials
    (and the login page could not load), a file missing from ASSETS would never be served."""
    static = Path(http_ui.__file__).parent / "ui" / "static"
    assert sorted(f for f, _ in http_ui.ASSETS.values()) == sorted(p.name for p in static.iterdir())
    for path in http_ui.ASSETS:
        rule = http_auth.rule_for("GET", path)
        assert rule is not None and rule.kind == "open", path


def _cells(page: Page, row: str) -> dict[str, str]:
    headers = page.locator("#groups thead th").all_inner_texts()
    values = page.locator(f'#groups tr[data-group="{row}"] td').all_inner_texts()
    return dict(zip(headers, values, strict=True))


def test_groups_page_lists_groups_with_counts_and_ttl(served: Served, tab: Tab) -> None:
    tab.open(f"{served.url}/ui", f'#groups tr[data-group="{MERCHANTS}"]')
    users = _cells(tab.page, USERS)
    assert users["Group"].startswith(USERS)
    assert users["Features"] == "6"
    assert users["TTL"] == "30 Days"
    assert users["History rows"] == "80"
    assert users["Records written"] == "80"
    assert "ago" in users["Last write"]
    assert _cells(tab.page, MERCHANTS)["History rows"] == "5"
    assert _cells(tab.page, MERCHANTS)["TTL"] == "none"
    # the write rate fills in after two seconds: nothing was written meanwhile
    expect(tab.page.locator(f'#groups tr[data-group="{USERS}"] [data-col="rate"]')).not_to_have_text(
        "…", timeout=10_000)
    assert _cells(tab.page, USERS)["Writes/s"] == "0"
    shot = tab.shot("groups")
    if os.environ.get("TESSERA_UI_DOCS") == "1":
        tab.page.screenshot(path=str(REPO / "docs" / "ui-groups.png"))
    assert shot.stat().st_size > 10_000
    tab.page.fill("#search", "merch")
    assert tab.page.locator(f'#groups tr[data-group="{USERS}"]').is_hidden()
    assert tab.page.locator(f'#groups tr[data-group="{MERCHANTS}"]').is_visible()


def test_group_page_shows_every_feature_with_its_type(served: Served, tab: Tab) -> None:
    tab.open(f"{served.url}/ui", f'#groups a[href="#/group/{USERS}"]')
    tab.page.click(f'#groups a[href="#/group/{USERS}"]')
    tab.page.wait_for_selector("#features")
    rows = {r.split("\t")[0]: r.split("\t") for r in
            tab.page.locator("#features tbody tr").all_inner_texts()}
    assert {name: cols[1] for name, cols in rows.items()} == {
        "user_id": "String", "ts": "Fractional", "clicks": "Integral", "ctr": "Fractional",
        "country": "String", "pages": "List<String>"}
    assert rows["ctr"][2] == "click-through rate"
    assert tab.page.inner_text("#version") == "1"
    text = tab.page.inner_text("main")
    assert not _NOT_A_VALUE.search(text), text
    tab.shot("group")


def test_record_lookup_shows_online_record_and_history(served: Served, tab: Tab) -> None:
    record = served.users["u047"]
    tab.open(f"{served.url}/ui#/record?group={USERS}&id=u047", "#history")
    online = dict(r.split("\t") for r in tab.page.locator("#online tbody tr").all_inner_texts())
    assert online["user_id"] == "u047"
    assert int(online["clicks"]) == record["clicks"]
    assert math.isclose(float(online["ctr"]), record["ctr"])
    assert online["country"] == record["country"]
    assert tab.page.inner_text("#expires").startswith("20")  # TTL 30 days: an ISO time
    history = tab.page.locator("#history tbody tr").all_inner_texts()
    assert len(history) == 1 and "false" in history[0]
    tab.shot("record")
    tab.open(f"{served.url}/ui#/record?group={USERS}&id=nobody", "#online-missing")
    for page in ("groups", "record", "offline", "ingest", "stats", "drift"):
        tab.page.goto(f"{served.url}/ui#/{page}")
        # the router marks the link and clears the page at once, then renders the page's h1
        tab.page.wait_for_selector(f'#nav a.active[data-page="{page}"]')
        tab.page.wait_for_selector("main h1")
        text = tab.page.inner_text("main")
        assert not _NOT_A_VALUE.search(text), (page, text)


def test_offline_page_shows_partitions_and_admin_compaction(served: Served, tab: Tab) -> None:
    tab.open(f"{served.url}/ui#/offline", f'.card[data-group="{USERS}"]')
    card = tab.page.locator(f'.card[data-group="{USERS}"]')
    assert card.locator('[data-col="rows"]').inner_text() == "80"
    assert tab.page.inner_text("#outbox") == "0 rows"
    tab.shot("offline")
    card.locator('[data-role="compact"]').click()  # no --auth: the caller is the local admin
    expect(card.locator('[data-role="compact-result"]')).to_contain_text("compacted",
                                                                         timeout=15_000)
    with httpx.Client(base_url=served.url) as http:  # compaction keeps every row
        assert http.get("/v1/offline-store").json()["groups"][USERS]["rows"] == 80


def test_ingestion_page_shows_topics_lag_and_dead_letters(served: Served, tab: Tab) -> None:
    topic_row = f'#topics tr:has-text("{served.topic}")'
    deadline = time.monotonic() + 30
    tab.open(f"{served.url}/ui#/ingest", "#topics, #no-ingest")
    while True:  # the consumer joins its group in the background: reload until it has written
        row = tab.page.locator(topic_row)
        if row.count() and row.inner_text().split("\t")[2] == str(N_INGESTED) \
                and tab.page.locator("#dead").count():
            break
        assert time.monotonic() < deadline, (
            f"nothing ingested: {tab.page.inner_text('main')}\n{served.proc.log()[-2000:]}")
        time.sleep(0.5)
        tab.page.reload()  # a goto to the same URL and hash would not load the page again
        tab.page.wait_for_selector("#topics, #no-ingest")
    assert tab.page.locator(topic_row).inner_text().split("\t")[:2] == [served.topic, VIEWS]
    dead = tab.page.locator("#dead tbody tr").all_inner_texts()
    assert [d.split("\t") for d in dead] == [[served.topic, "undecodable", "1"]]
    latest = [r.split("\t") for r in tab.page.locator("#latest-dead tbody tr").all_inner_texts()]
    assert len(latest) == 1
    assert (latest[0][1], latest[0][3]) == (served.topic, "undecodable")
    assert "not valid JSON" in latest[0][4]  # the decoder's reason, from the letter's headers
    lag = [r.split("\t") for r in tab.page.locator("#lag tbody tr").all_inner_texts()]
    assert sorted(r[1] for r in lag if r[0] == served.topic) == ["0", "1"]
    tab.shot("ingest")


def _stats_routes(served: Served) -> None:
    paths = httpx.get(f"{served.url}/openapi.json").json()["paths"]
    if "/v1/feature-groups/{group}/statistics" not in paths:
        pytest.skip("the statistics and drift routes are not in this server yet")


def _iso_minute(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(t))


def test_statistics_page_charts_a_histogram(served: Served, tab: Tab) -> None:
    _stats_routes(served)
    start, end = _iso_minute(served.now_s - 4 * DAY_S), _iso_minute(served.now_s + 3600)
    tab.open(f"{served.url}/ui#/stats?group={USERS}&start={start}&end={end}",
             '#stats .card[data-feature="clicks"] svg')
    card = tab.page.locator('#stats .card[data-feature="clicks"]')
    assert card.locator('[data-stat="count"]').inner_text() == str(N_WINDOW)
    assert card.locator('[data-stat="nulls"]').inner_text() == "0"
    assert card.locator('[data-stat="max"]').inner_text() == "9"
    counts = [int(c) for c in card.locator("svg rect.bar").evaluate_all(
        "bars => bars.map(b => b.dataset.count)")]
    assert sum(counts) == N_WINDOW
    country = tab.page.locator('#stats .card[data-feature="country"] svg').text_content() or ""
    assert "DE" in country and "FR" in country and "US" not in country
    pages = tab.page.locator('#stats .card[data-feature="pages"]')  # a list: its lengths
    assert pages.locator('[data-stat="length max"]').inner_text() == "3"
    lengths = pages.locator("svg rect.bar").evaluate_all("b => b.map(x => +x.dataset.count)")
    assert sum(lengths) == N_WINDOW
    tab.shot("statistics")
    # a window that ends before it starts: the server's 422 under the form, which stays
    tab.open(f"{served.url}/ui#/stats?group={USERS}&start={end}&end={start}", "p.error")
    assert tab.page.locator("p.error").inner_text().startswith("422")
    assert tab.page.locator("#start").input_value() == end
    tab.errors[:] = [e for e in tab.errors if "422" not in e]  # the browser's own line for it


def test_drift_page_flags_the_shifted_features(served: Served, tab: Tab) -> None:
    _stats_routes(served)
    q = (f"group={USERS}&baseline_start={_iso_minute(served.now_s - 13 * DAY_S)}"
         f"&baseline_end={_iso_minute(served.now_s - 8 * DAY_S)}"
         f"&start={_iso_minute(served.now_s - 4 * DAY_S)}&end={_iso_minute(served.now_s + 3600)}")
    tab.open(f"{served.url}/ui#/drift?{q}", '#drift-charts .card[data-feature="ctr"] svg')

    def row(feature: str) -> tuple[str, str]:
        r = tab.page.locator(f'#drift tr[data-feature="{feature}"]')
        return r.locator('[data-col="psi"]').inner_text(), r.locator('[data-col="drifted"]').inner_text()

    assert row("ctr")[1] == "drifted" and float(row("ctr")[0]) > 0.2
    assert row("country")[1] == "drifted"
    assert row("clicks")[1] == "stable" and float(row("clicks")[0]) < 0.2
    assert row("pages")[1] == "stable"  # a list's lengths: the same in both windows
    # overlaid histograms: the baseline's bars and the window's, each N_WINDOW values
    chart = tab.page.locator('#drift-charts .card[data-feature="ctr"] svg')
    baseline = chart.locator("rect.bar:not(.b)").evaluate_all("b => b.map(x => +x.dataset.count)")
    window = chart.locator("rect.bar.b").evaluate_all("b => b.map(x => +x.dataset.count)")
    assert sum(baseline) == N_WINDOW and sum(window) == N_WINDOW
    tab.shot("drift")
    if os.environ.get("TESSERA_UI_DOCS") == "1":
        tab.page.screenshot(path=str(REPO / "docs" / "ui-drift.png"), full_page=True)


def test_offline_store_endpoint_agrees_with_sql(served: Served) -> None:
    """GET /v1/offline-store reads only Parquet footers: its rows per partition and last write
    must be what a query over the same files answers."""
    with httpx.Client(base_url=served.url, timeout=10) as http:
        store = http.get("/v1/offline-store").json()["groups"][USERS]
        rows = http.post("/v1/sql", json={"query": f"SELECT CAST(event_date AS VARCHAR), "
                                                   f"count(*), max(write_time) FROM {USERS} "
                                                   "GROUP BY 1 ORDER BY 1"}).json()["rows"]
        page = http.get("/ui")
    assert [(p["event_date"], p["rows"]) for p in store["partitions"]] == [(r[0], r[1]) for r in rows]
    last = max(r[2] for r in rows)  # ISO with microseconds; the endpoint's has milliseconds
    assert store["last_write"][:23] == last.replace(" ", "T")[:23]
    assert store["files"] >= len(rows) and store["bytes"] > 0
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]


# --- with --auth: the key prompt, readable groups only, no admin buttons for a reader ----------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data = tmp_path_factory.mktemp("ui_auth") / "data"
    store = KeyStore(data)
    admin = store.create("ops", ["admin"]).secret
    reader = store.create("dashboards", [f"read:{MERCHANTS}"]).secret
    proc = ServerProcess(data, extra_env={"TESSERA_AUTH__ENABLED": "true",
                                          "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.2"}).start(timeout_s=90)
    with httpx.Client(base_url=proc.http_url, timeout=10,
                      headers={"authorization": f"Bearer {admin}"}) as http:
        for body in (_users_definition(), _merchants_definition()):
            assert http.post("/v1/feature-groups", json=body).status_code == 201
        record = {"merchant_id": "m1", "ts": time.time(), "risk": 0.5}
        assert http.put(f"/v1/feature-groups/{MERCHANTS}/records",
                        json={"record": record}).status_code == 200
        _wait(lambda: http.get("/v1/offline-store").json()["groups"][MERCHANTS]["files"] > 0,
              timeout_s=20)
    yield proc, reader
    proc.stop()


def test_with_auth_a_reader_signs_in_and_sees_only_readable_groups(
    secured: tuple[ServerProcess, str], tab: Tab
) -> None:
    proc, reader = secured
    tab.open(f"{proc.http_url}/ui", "#api-key")
    tab.shot("sign-in")
    tab.page.fill("#api-key", "not-a-key")
    tab.page.click("form.login button")
    tab.page.wait_for_selector("text=That key was refused")
    tab.page.fill("#api-key", reader)
    tab.page.click("form.login button")
    tab.page.wait_for_selector(f'#groups tr[data-group="{MERCHANTS}"]')
    assert tab.page.locator("#groups tbody tr").count() == 1
    assert tab.page.inner_text("#who").startswith("dashboards")
    tab.page.goto(f"{proc.http_url}/ui#/offline")
    tab.page.wait_for_selector(f'.card[data-group="{MERCHANTS}"]')
    assert tab.page.locator('[data-role="compact"]').count() == 0  # a reader: no admin button
    assert tab.page.locator(f'.card[data-group="{USERS}"]').count() == 0
    with httpx.Client(base_url=proc.http_url, timeout=10,
                      headers={"authorization": f"Bearer {reader}"}) as http:
        assert http.get("/v1/whoami").json() == {
            "name": "dashboards", "kind": "api-key", "admin": False,
            "permissions": [f"read:{MERCHANTS}"]}
        assert list(http.get("/v1/offline-store").json()["groups"]) == [MERCHANTS]
        assert http.get("/v1/ingest/dead-letters").json() == {  # this server consumes nothing
            "configured": False, "dead_letters": []}
        assert http.post(f"/v1/feature-groups/{MERCHANTS}/compact").status_code == 403
    assert httpx.get(f"{proc.http_url}/v1/whoami").status_code == 401
    assert httpx.get(f"{proc.http_url}/ui/app.js").status_code == 200  # assets: no key
    # the 401s of the refused key are the browser's own console lines: not the UI's errors
    tab.errors[:] = [e for e in tab.errors if "401" not in e]
