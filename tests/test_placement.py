"""Several nodes without an actor system: ``[cluster]`` settings, placement, membership."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import ClusterSettings, Settings, load_settings
from messages.protocol import NodeInfo
from supervision.nodes import Membership, choose_node, node_slot_names, storage_identity
from supervision.spec import system_tree


def node(name: str, state: str = "up", roles: tuple[str, ...] = ("collector", "predictor"),
         leader: bool = False) -> NodeInfo:
    return NodeInfo(name, roles, leader, state, 0, 0)


NODES = {n.name: n for n in (node("a", leader=True, roles=("collector", "predictor",
                                                           "learning")),
                             node("b"), node("c"))}


def test_a_slot_runs_at_home_while_its_home_is_up() -> None:
    assert choose_node("predictor", "b", NODES, {"a": 0, "b": 9, "c": 0}) == "b"


def test_a_slot_whose_home_is_down_goes_to_the_least_loaded_node_of_its_role() -> None:
    nodes = dict(NODES, b=node("b", state="down"))
    assert choose_node("predictor", "b", nodes, {"a": 2, "c": 1}) == "c"
    assert choose_node("predictor", "b", nodes, {"a": 1, "c": 1}) == "a"  # the leader on a tie
    # Spreading several: each choice counts the ones before it.
    load = {"a": 2, "c": 2}
    placed = []
    for _ in range(4):
        target = choose_node("collector", "b", nodes, load)
        assert target is not None
        placed.append(target)
        load[target] += 1
    assert sorted(placed) == ["a", "a", "c", "c"]


def test_only_nodes_with_the_role_host_it_and_none_means_unplaced() -> None:
    nodes = {"a": node("a", leader=True, roles=("learning",)), "b": node("b", state="down")}
    assert choose_node("collector", "b", nodes, {}) is None
    nodes["c"] = node("c", roles=("predictor",))
    assert choose_node("collector", "b", nodes, {}) is None
    assert choose_node("predictor", "b", nodes, {}) == "c"


def test_single_workers_stay_with_their_supervisor() -> None:
    assert choose_node("learner", "a", NODES, {}) == "a"
    assert choose_node("supervisor", "a", NODES, {}) == "a"


def test_member_slots_are_named_after_their_node() -> None:
    assert node_slot_names("collector", "b", 2) == ["collector-1@b", "collector-2@b"]


def _settings(tmp_path: Path, name: str, **cluster: object) -> Settings:
    base = Settings(data_dir=str(tmp_path / "data"))
    return replace(base, cluster=ClusterSettings(node_name=name, **cluster))  # type: ignore[arg-type]


def test_membership_accepts_a_member_on_the_same_store_and_refuses_the_rest(
        tmp_path: Path) -> None:
    leader = _settings(tmp_path, "a")
    table = Membership(leader)
    member = _settings(tmp_path, "b", join="127.0.0.1:1", roles=("collector",))
    joined = table.joined("admin-b", {"rml.node": "b", "rml.roles": ("collector",),
                                      "rml.settings": member})
    assert joined is not None and joined.state == "joining"
    table.up(joined)
    # The same admin registering again changes nothing; another admin with its name is refused.
    assert table.joined("admin-b", {"rml.node": "b", "rml.roles": ("collector",),
                                    "rml.settings": member}) is None
    assert table.joined("admin-x", {"rml.node": "b", "rml.roles": ("collector",),
                                    "rml.settings": member}) is None
    other_store = replace(member, data_dir=str(tmp_path / "elsewhere"))
    assert table.joined("admin-c", {"rml.node": "c", "rml.roles": ("collector",),
                                    "rml.settings": other_store}) is None
    assert table.joined("admin-d", {"rml.node": "a", "rml.roles": ("collector",),
                                    "rml.settings": member}) is None
    states = {(n.name, n.state): n.problem for n in table.snapshot().nodes}
    assert states[("a", "up")] == "" and states[("b", "up")] == ""
    assert "taken" in states[("b", "refused")]
    assert "store" in states[("c", "refused")]
    assert "leader" in states[("a", "refused")]
    # Once b is down, the admin refused for its name is admitted on asking again.
    table.down(joined)
    assert table.joined("admin-x", {"rml.node": "b", "rml.roles": ("collector",),
                                    "rml.settings": member}) is not None
    assert "admin-x" not in table.refused
    # A plain Thespian system (no rml.node) is not ours to place on.
    assert table.joined("admin-e", {"Admin Port": 1}) is None
    # Leaving: down, and a refused admin that leaves is forgotten.
    assert table.left("admin-b") is None  # admin-x holds the name b now
    rejoined = table.members["b"]
    assert table.left("admin-x") is rejoined and not rejoined.listed
    assert table.down(rejoined) and rejoined.state == "down" and not table.down(rejoined)
    assert table.left("admin-c") is None
    assert ("c", "refused") not in {(n.name, n.state) for n in table.snapshot().nodes}


def test_storage_identity_names_the_shared_store(tmp_path: Path) -> None:
    s = _settings(tmp_path, "a")
    assert storage_identity(s) == ("sqlite", str(s.data_path))


def test_the_leader_tree_holds_only_the_replicas_its_roles_allow(tmp_path: Path) -> None:
    s = _settings(tmp_path, "a", roles=("learning",))
    tree = system_tree(s)
    by_name = {c.name: c.spec for c in tree.children}
    ingest, serving = by_name["ingest"], by_name["serving"]
    assert ingest is not None and serving is not None
    assert [c.name for c in ingest.children] == ["feature-generator"]
    assert serving.children == () and serving.policy.standby == 0
    assert [t.role for t in ingest.replica_templates] == ["collector"]
    assert [t.role for t in serving.replica_templates] == ["predictor"]


# --- [cluster] settings ------------------------------------------------------------------


def _refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    path = tmp_path / "rml.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return caught.value


def test_cluster_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "member.toml"
    path.write_text('[actor_system]\nadmin_port = 19481\n[cluster]\nnode_name = "b"\n'
                    'join = "127.0.0.1:19471"\nroles = ["collector", "predictor"]\n')
    s = load_settings(path, {})
    assert (s.cluster.node_name, s.cluster.join, s.cluster.roles) == (
        "b", "127.0.0.1:19471", ("collector", "predictor"))
    assert s.cluster.join_address() == ("127.0.0.1", 19471) and not s.cluster.leads
    assert s.run_dir == s.data_path / "run" / "b" and s.log_dir == s.data_path / "logs" / "b"
    env = load_settings(path, {"RML_CLUSTER_ROLES": "predictor", "RML_CLUSTER_NODE_NAME": "c"})
    assert (env.cluster.node_name, env.cluster.roles) == ("c", ("predictor",))
    single = load_settings(None, {})
    assert single.node_name == "local" and single.run_dir == single.data_path / "run"


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[cluster]\nroles = ["collector", "gpu"]\n', "cluster.roles", "distinct roles"),
    ('[cluster]\nroles = []\n', "cluster.roles", "distinct roles"),
    ('[cluster]\nroles = ["collector"]\n', "cluster.roles", "learning"),
    ('[cluster]\nnode_name = "b"\njoin = "127.0.0.1:19471"\n', "cluster.roles", "leader only"),
    ('[cluster]\njoin = "127.0.0.1:19471"\nroles = ["predictor"]\n', "cluster.node_name",
     "name"),
    ('[cluster]\nnode_name = "b c"\n', "cluster.node_name", "letters"),
    ('[cluster]\nnode_name = "b"\njoin = "leader"\nroles = ["predictor"]\n', "cluster.join",
     "host:port"),
    ('[cluster]\nnode_name = "b"\njoin = "10.0.0.5:19471"\nroles = ["predictor"]\n',
     "cluster.join", "allow_non_loopback"),
    ('[actor_system]\nallow_non_loopback = true\n[cluster]\nnode_name = "b"\n'
     'join = "10.0.0.5:19471"\nroles = ["predictor"]\n', "actor_system.bind", "loopback"),
    ('[cluster]\nnode_name = "b"\njoin = "127.0.0.1:19471"\nroles = ["predictor"]\n',
     "cluster.join", "own admin address"),
])
def test_bad_cluster_settings_are_refused_by_name(tmp_path: Path, text: str, key: str,
                                                  words: str) -> None:
    error = _refused(tmp_path, text)
    assert error.key == key and words in str(error), str(error)
