"""Dependency checks: npm-style ranges matched by node-semver against the versions the
registry holds, transitive trees with cycles named, and the reverse (dependents)."""

from __future__ import annotations

import pytest

from chora_manifests import dependencies as deps
from chora_manifests.dependencies import Capability, Dependency


def caps(*views: dict) -> dict[str, Capability]:
    return deps.index(views)


def view(ns: str, version: str | None, *requires: tuple[str, str] | str) -> dict:
    items = [r if isinstance(r, str) else {"capability": r[0], "version": r[1],
                                           "relationship": "runtime"} for r in requires]
    return {"namespace": ns, "version": version, "dependencies": items}


@pytest.mark.parametrize(("range_", "version", "status"), [
    ("^1.0.0", "1.0.0", "satisfied"),
    ("^1.0.0", "1.9.3", "satisfied"),
    ("^1.0.0", "2.0.0", "unsatisfied"),
    ("^1.0.0", "0.9.9", "unsatisfied"),
    ("^0.2.3", "0.3.0", "unsatisfied"),  # caret below 1.0 pins the minor
    ("~1.2", "1.2.9", "satisfied"),
    ("~1.2", "1.3.0", "unsatisfied"),
    ("~1.2", "1.1.9", "unsatisfied"),
    (">=1.0.0 <2", "1.99.0", "satisfied"),
    (">=1.0.0 <2", "2.0.0", "unsatisfied"),
    (">=1.0.0 <2", "0.1.0", "unsatisfied"),
    ("*", "0.0.1", "satisfied"),
    ("*", "42.0.0", "satisfied"),
    ("", "3.0.0", "satisfied"),  # an absent range means '*'
    ("^1.0.0", "1.5.0-beta.1", "unsatisfied"),  # npm: pre-releases only when named
    ("*", "2.0.0-rc.1", "unsatisfied"),
    ("^1.0.0", None, "missing"),
    ("one point oh", "1.0.0", "invalid"),
    ("^1.0.0", "1.0", "invalid"),  # what the registry holds is not SemVer
])
def test_the_four_range_forms_are_matched_as_npm_does(range_, version, status):
    assert deps.check_range(range_, version)[0] == status


def test_a_dependency_is_read_from_a_dict_or_a_bare_string():
    assert Dependency.parse("chora.x") == Dependency("chora.x", "*", "requires")
    assert Dependency.parse({"capability": "chora.x", "version": "^1.0.0",
                             "relationship": "prerequisite", "description": "why"}) == \
        Dependency("chora.x", "^1.0.0", "prerequisite")
    assert Dependency.parse({"capability": "chora.x", "version": None}).range == "*"
    assert Dependency.parse({"version": "^1"}) is None and Dependency.parse(3) is None


def test_the_tree_checks_every_requirement_and_counts_the_verdicts():
    report = deps.tree(caps(
        view("app", "1.0.0", ("lib", "^1.0.0"), ("old", "~1.2"), ("ghost", "*")),
        view("lib", "1.4.0", ("base", ">=1.0.0 <2")),
        view("old", "1.3.0"),
        view("base", "1.0.0"),
    ), "app")
    lib, old, ghost = report.root.children
    assert (lib.via.status, old.via.status, ghost.via.status) == ("satisfied",
                                                                  "unsatisfied", "missing")
    assert lib.children[0].namespace == "base" and lib.children[0].via.status == "satisfied"
    assert report.counts == {"satisfied": 2, "unsatisfied": 1, "missing": 1, "invalid": 0}
    assert report.cycles == () and not report.ok


def test_a_cycle_is_named_once_and_not_followed_round_again():
    report = deps.tree(caps(
        view("a", "1.0.0", ("b", "^1.0.0")),
        view("b", "1.0.0", ("c", "*")),
        view("c", "1.0.0", ("a", "^1.0.0"), ("b", "*")),
    ), "a")
    assert report.cycles == (("a", "b", "c", "a"), ("b", "c", "b"))
    c = report.root.children[0].children[0]
    assert [child.cycle for child in c.children] == [("a", "b", "c", "a"), ("b", "c", "b")]
    assert deps.format_cycle(report.cycles[0]) == "a → b → c → a"


def test_a_capability_requiring_itself_is_a_cycle():
    report = deps.tree(caps(view("a", "1.0.0", ("a", "*"))), "a")
    assert report.cycles == (("a", "a"),)


def test_a_capability_reached_twice_is_expanded_once():
    report = deps.tree(caps(
        view("app", "1.0.0", ("x", "*"), ("y", "*")),
        view("x", "1.0.0", ("shared", "*")),
        view("y", "1.0.0", ("shared", "*")),
        view("shared", "1.0.0", ("leaf", "*")),
        view("leaf", "1.0.0"),
    ), "app")
    first, second = (n.children[0] for n in report.root.children)
    assert first.children and not first.repeated
    assert second.repeated and not second.children
    assert report.cycles == ()


def test_a_capability_without_a_version_makes_its_requirements_invalid():
    report = deps.tree(caps(view("a", "1.0.0", ("b", "*")), view("b", None)), "a")
    assert report.root.children[0].via.status == "invalid"


def test_the_root_must_exist():
    with pytest.raises(KeyError):
        deps.tree({}, "nothing")


def test_dependents_lists_each_capability_requiring_the_namespace_with_its_verdict():
    found = deps.dependents(caps(
        view("base", "2.0.0"),
        view("new", "1.0.0", ("base", "^2.0.0")),
        view("legacy", "1.0.0", ("base", "^1.0.0")),
        view("other", "1.0.0", ("elsewhere", "*")),
    ), "base")
    assert [(d.namespace, d.check.status) for d in found] == [("legacy", "unsatisfied"),
                                                              ("new", "satisfied")]


def test_the_json_form_of_a_report_keeps_the_verdicts_and_cycles():
    report = deps.tree(caps(view("a", "1.0.0", ("b", "^1.0.0")),
                            view("b", "1.0.0", ("a", "*"))), "a")
    data = deps.report_to_json(report)
    assert data["tree"]["dependencies"][0]["status"] == "satisfied"
    assert data["cycles"] == [["a", "b", "a"]] and data["ok"] is False
