"""Every named endpoint, every parameter, called over raw HTTP (gradio_client cannot send NaN) with
values no widget would send: each is refused in one line naming what is wrong, before any job
starts or any file is written. How long a refusal takes: benchmarks/app_latency.py --fuzz."""
from __future__ import annotations

import json
import time

import httpx

from served import serve

BAD = {"NaN": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "1e30": 1e30, "-1e30": -1e30,
       "-3": -3, "text": "abc", "true": True, "long list": [1] * 5000, "long text": "x" * 100_000,
       "object": {"a": 1}}


def call_raw(url: str, api_name: str, data: list) -> tuple[str, str]:
    """(event, data) of one call through Gradio's HTTP API; json.dumps writes NaN/Infinity as
    Python's json (which the server reads) does."""
    route = f"{url.rstrip('/')}/gradio_api/call/{api_name.lstrip('/')}"
    posted = httpx.post(route, content=json.dumps({"data": data}), timeout=30,
                        headers={"Content-Type": "application/json"})
    if posted.status_code != 200:
        return "http", f"{posted.status_code} {posted.text}"
    event, payload = "", ""
    with httpx.stream("GET", f"{route}/{posted.json()['event_id']}", timeout=60) as events:
        for line in events.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
    return event, payload


def endpoint_calls(client):
    """(api_name, parameter, label, positional data) for each parameter of each named endpoint
    and each bad value; the other parameters keep their defaults."""
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for api_name, endpoint in sorted(named.items()):
        params = endpoint["parameters"]
        defaults = [p["parameter_default"] if p["parameter_has_default"] else "" for p in params]
        for i, p in enumerate(params):
            for label, value in BAD.items():
                yield api_name, p["parameter_name"], label, defaults[:i] + [value] + defaults[i + 1:]


def snapshot(root) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_every_endpoint_refuses_bad_values_in_one_line_and_starts_nothing(lab_workspace):
    from app.context import AppContext
    from gradio_client import Client
    ctx = AppContext.create(lab_workspace.root)
    with serve(ctx) as (_, url):
        client = Client(url, verbose=False, download_files=False)
        calls = list(endpoint_calls(client))
        before, job = snapshot(lab_workspace.root), ctx.runner.status()["job_id"]
        faults, slowest = [], 0.0
        for api_name, name, label, data in calls:
            start = time.perf_counter()
            event, payload = call_raw(url, api_name, data)
            slowest = max(slowest, time.perf_counter() - start)
            message = json.loads(payload) if payload else None
            message = message.get("error") if isinstance(message, dict) else message
            if event != "error" or not isinstance(message, str) or not message.strip() \
                    or "\n" in message or len(message) > 300:
                faults.append(f"{api_name} {name}={label}: {event} {str(message)[:100]!r}")
        assert not faults, "\n".join(faults)
        assert ctx.runner.status()["job_id"] == job                  # nothing started
        assert snapshot(lab_workspace.root) == before                # nothing written
    print(f"{len(calls)} refusals, slowest {slowest:.2f} s")
    assert len(calls) >= 10 * len(BAD)
