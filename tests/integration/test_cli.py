"""The ``manifest`` console script against a real registry and etcd: tables, ``-o json``,
exit codes 1 (not found) and 2 (unreachable), ``watch`` and the dependency commands."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chora_manifest_client import ManifestClient
from services.core.localcluster import free_ports
from tests.integration.test_client_harness import REPO, delete_capability, put_capability

pytest_plugins = ["tests.integration.test_client_harness"]  # its fixtures

MANIFEST = Path(sys.executable).with_name("manifest")  # the console script pyproject declares
REST = "http://127.0.0.1:9000"


def manifest(url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MANIFEST_URL": url}
    env.pop("COLUMNS", None)
    return subprocess.run([str(MANIFEST), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def client(server) -> ManifestClient:
    return ManifestClient(server.url)


@pytest.fixture
def instance(client, unique):
    """An instance kept up by the heartbeat helper (the registry of these tests marks a
    silent one unhealthy after 3 s and removes it after 6 s)."""
    with client.keep_registered(unique, "2.1.0", {"REST": REST, "CLI": "tool"},
                                {"tags": ["core", unique], "dependencies": ["manifest"]}) as hb:
        yield hb.instance_id


def test_list_shows_each_instance_as_a_table_row(server, unique, instance):
    done = manifest(server.url, "list")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if instance in line)
    assert unique in row and "2.1.0" in row and "up" in row and f"REST={REST}" in row


def test_list_as_json_is_the_registry_answer(server, instance):
    done = manifest(server.url, "list", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert instance in [r["id"] for r in json.loads(done.stdout)]


def test_get_shows_the_service_and_json_gives_its_record(server, unique, instance):
    table = manifest(server.url, "get", unique)
    assert table.returncode == 0 and instance in table.stdout
    record = json.loads(manifest(server.url, "get", unique, "-o", "json").stdout)
    assert record["id"] == instance and record["interfaces"]["CLI"] == "tool"


def test_get_of_an_unknown_service_exits_1_with_one_line(server, unique):
    done = manifest(server.url, "get", f"{unique}-ghost")
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error:") and "not found" in done.stderr


def test_query_combines_status_and_tag(server, unique, instance, client):
    other = client.register(f"{unique}-other", "1.0.0", {"REST": REST}, {"tags": ["edge"]})
    try:
        done = manifest(server.url, "query", "--status", "up", "--tag", unique, "-o", "json")
        assert [r["id"] for r in json.loads(done.stdout)] == [instance]
        none = manifest(server.url, "query", "--status", "unhealthy", "--tag", unique)
        assert none.returncode == 0 and "no service instances" in none.stdout
        deps = json.loads(manifest(server.url, "query", "--dependency", "manifest",
                                   "-o", "json").stdout)
        assert instance in [r["id"] for r in deps] and other not in [r["id"] for r in deps]
    finally:
        client.deregister(f"{unique}-other", other)


def test_an_unreachable_registry_exits_2_with_one_line():
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    for args in (["list"], ["get", "x"], ["deps", "chora.x"], ["watch"]):
        done = manifest(dead, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
        assert "unreachable" in done.stderr and dead in done.stderr


def test_a_second_url_is_used_when_the_first_is_dead(server, instance):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    done = manifest(f"{dead},{server.url}", "list", "-o", "json")
    assert done.returncode == 0 and instance in done.stdout


def test_watch_prints_a_change_as_it_comes(server, unique, client):
    client.list_services()
    since = str(client.last_index)
    env = {**os.environ, "MANIFEST_URL": server.url}
    proc = subprocess.Popen([str(MANIFEST), "watch", "--since", since, "--count", "2"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    try:
        instance_id = client.register(unique, "1.0.0", {"REST": REST})
        client.deregister(unique, instance_id)
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if instance_id in line:
                seen.append(line)
        assert len(seen) == 2, seen
        assert " up " in f" {seen[0]} " and "down" in seen[1]
        assert proc.wait(10) == 0  # --count 2 ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_watch_as_json_gives_one_object_per_line(server, unique, client):
    client.list_services()
    since = str(client.last_index)
    instance_id = client.register(unique, "1.0.0", {"REST": REST})
    client.deregister(unique, instance_id)
    done = manifest(server.url, "watch", "--since", since, "--count", "2", "-o", "json")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    mine = [e for e in events if (e["record"] or {}).get("id") == instance_id]
    assert [e["removed"] for e in mine] == [False, True]


def test_every_command_explains_itself_in_help():
    for command in ("list", "get", "query", "watch", "capabilities", "deps", "dependents"):
        done = manifest("http://127.0.0.1:1", command, "--help")
        assert done.returncode == 0 and "Usage" in done.stdout
        assert "--output" in done.stdout or command in ("watch",)


# -- capabilities and dependencies ---------------------------------------------------------


@pytest.fixture
def graph(etcd_store, unique, server, client):
    """root requires: ok (^1.0.0 held 1.4.0), old (~1.2 held 1.3.0), gone (missing),
    loop (>=1.0.0 <2 held 1.0.0), which requires root back: a cycle."""
    ns = {k: f"test.{unique}.{k}" for k in ("root", "ok", "old", "gone", "loop")}
    put_capability(etcd_store, ns["root"], "1.0.0", [
        {"capability": ns["ok"], "version": "^1.0.0", "relationship": "runtime"},
        {"capability": ns["old"], "version": "~1.2", "relationship": "prerequisite"},
        {"capability": ns["gone"], "version": "*", "relationship": "optional"},
        {"capability": ns["loop"], "version": ">=1.0.0 <2", "relationship": "extends"}])
    put_capability(etcd_store, ns["ok"], "1.4.0")
    put_capability(etcd_store, ns["old"], "1.3.0", type_="pattern")
    put_capability(etcd_store, ns["loop"], "1.0.0", [
        {"capability": ns["root"], "version": "*", "relationship": "runtime"}])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = {c["namespace"] for c in client.list_capabilities()}
        if {ns["root"], ns["ok"], ns["old"], ns["loop"]} <= held:
            break
        time.sleep(0.05)
    yield ns
    for namespace in ns.values():
        delete_capability(etcd_store, namespace)


def test_capabilities_lists_what_etcd_holds_and_filters_by_type(server, graph):
    done = manifest(server.url, "capabilities")
    assert done.returncode == 0 and graph["root"] in done.stdout
    patterns = json.loads(manifest(server.url, "capabilities", "--type", "pattern",
                                   "-o", "json").stdout)
    mine = {c["namespace"] for c in patterns if c["namespace"].startswith("test.")}
    assert graph["old"] in mine and graph["root"] not in mine


def test_capabilities_of_an_unknown_namespace_exits_1(server, unique):
    done = manifest(server.url, "capabilities", f"test.{unique}.nothing")
    assert done.returncode == 1 and done.stderr.startswith("error:")


def test_deps_shows_satisfied_unsatisfied_missing_and_the_cycle(server, graph):
    done = manifest(server.url, "deps", graph["root"])
    assert done.returncode == 0, done.stderr
    out = done.stdout
    line = {key: next(x for x in out.splitlines() if graph[key] in x and "→" in x)
            for key in ("ok", "old", "gone")}
    assert "satisfied" in line["ok"] and "unsatisfied" not in line["ok"]
    assert "unsatisfied" in line["old"]
    assert "missing" in line["gone"]
    assert f"cycle: {graph['root']} → {graph['loop']} → {graph['root']}" in out


def test_deps_as_json_gives_each_verdict_and_the_cycle(server, graph):
    report = json.loads(manifest(server.url, "deps", graph["root"], "-o", "json").stdout)
    verdicts = {d["capability"]: d["status"] for d in report["tree"]["dependencies"]}
    assert verdicts == {graph["ok"]: "satisfied", graph["old"]: "unsatisfied",
                        graph["gone"]: "missing", graph["loop"]: "satisfied"}
    assert report["cycles"] == [[graph["root"], graph["loop"], graph["root"]]]
    assert report["ok"] is False


def test_deps_of_an_unknown_capability_exits_1(server, unique):
    done = manifest(server.url, "deps", f"test.{unique}.nothing")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1


def test_dependents_lists_capabilities_and_instances(server, graph, client, unique):
    with client.keep_registered(f"{unique}-user", "1.0.0", {"REST": REST},
                                {"dependencies": [graph["ok"]]}) as hb:
        instance_id = hb.instance_id
        report = json.loads(manifest(server.url, "dependents", graph["ok"], "-o",
                                     "json").stdout)
        assert [(c["capability"], c["status"]) for c in report["capabilities"]] == [
            (graph["root"], "satisfied")]
        assert [r["id"] for r in report["instances"]] == [instance_id]
        table = manifest(server.url, "dependents", graph["ok"]).stdout
        assert graph["root"] in table and instance_id in table


def test_dependents_of_something_nobody_knows_exits_1(server, unique):
    done = manifest(server.url, "dependents", f"test.{unique}.nothing")
    assert done.returncode == 1 and "nothing depends on it" in done.stderr
