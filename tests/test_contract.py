"""The contract every registered kind keeps, on a real resource of that kind (tests/kinds.py builds them):

    checkpoint → production is changed → restore → production observes equal to the checkpoint;
    a shadow built from the checkpoint is faithful and observes equal to it;
    a fingerprint is stable while nothing changes;
    a change made through a shadow's endpoint shows up in its change set, the rehearsed rollback undoes it,
    and nothing done to a shadow reaches production.

Every test runs once per kind in ``adapters.REGISTRY``; a kind without a builder in ``tests.kinds.BUILDERS`` fails.
Each kind's own suite (test_postgres_contract.py, test_s3_contract.py, test_git_adapter.py) goes deeper.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import REGISTRY, Checkpoint, Kind
from shadow.changes import Change, walk
from snapshots import Store
from tests.kinds import BUILDERS, KindCase

RUN_ID = "20260101-000000-contract"
KINDS = sorted(REGISTRY)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test once per registered kind; a test that takes ``backend`` once per backend the kind has."""
    if "case" not in metafunc.fixturenames:
        return
    if "backend" in metafunc.fixturenames:
        pairs = [(kind, backend) for kind in KINDS for backend in backends_of(kind)]
        metafunc.parametrize(("case", "backend"), pairs, indirect=True, ids=[f"{k}-{b}" for k, b in pairs])
    else:
        metafunc.parametrize("case", KINDS, indirect=True)


def backends_of(kind: str) -> tuple[str, ...]:
    builder = BUILDERS.get(kind)
    return builder.backends if builder else ("local",)


@pytest.fixture
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KindCase]:
    """A real production resource of one registered kind, with its target and mutation."""
    builder = BUILDERS.get(request.param)
    if builder is None:
        pytest.fail(f"kind {request.param!r} is registered but has no contract fixture: add one to tests/kinds.py")
    with builder.build(request, tmp_path) as built:
        assert built.kind == request.param == built.target.kind
        yield built


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def addresses(changes: list[Change]) -> set[str]:
    """Every change's address, nested ones included."""
    return {c.address for c in walk(changes)}


def checkpoint(case: KindCase, store: Store) -> Checkpoint:
    cp = case.target.checkpoint(store, RUN_ID)
    assert (cp.target, cp.kind, cp.run_id) == (case.target.name, case.kind, RUN_ID)
    assert cp.fingerprint == case.target.fingerprint(cp.observation)
    return cp


def test_every_registered_kind_has_a_contract_fixture() -> None:
    assert set(BUILDERS) == set(REGISTRY)


def test_every_registered_kind_declares_every_member_of_the_kind_protocol() -> None:
    members = set(Kind.__annotations__) | {name for name in vars(Kind) if not name.startswith("_")}
    assert {"clear_leftovers", "prune"} <= members
    missing = {name: sorted(m for m in members if not hasattr(REGISTRY[name], m)) for name in KINDS}
    assert missing == {name: [] for name in KINDS}


def test_clearing_an_empty_leftover_dir_stops_nothing(tmp_path: Path) -> None:
    assert {name: REGISTRY[name].clear_leftovers(tmp_path) for name in KINDS} == {name: [] for name in KINDS}
    assert tmp_path.is_dir(), "a kind stops what runs in the dir; gc removes it"


def test_restore_after_production_changed_observes_equal_to_the_checkpoint(case: KindCase, store: Store) -> None:
    before = case.state()
    cp = checkpoint(case, store)
    assert case.state() == before, "the checkpoint changed production"

    case.mutate(case.target.endpoint())

    assert case.state() != before
    assert case.target.fingerprint() != cp.fingerprint, "the observation does not see the mutation"
    assert case.changed <= addresses(case.target.changes_since(cp, None))
    assert case.target.verify_restored(cp) != []

    case.target.restore(cp, store)

    assert case.target.verify_restored(cp) == []
    assert case.target.fingerprint() == cp.fingerprint
    assert case.target.changes_since(cp, None) == []


def test_restore_of_an_unchanged_resource_leaves_it_as_it_was(case: KindCase, store: Store) -> None:
    before = case.state()
    cp = checkpoint(case, store)
    case.target.restore(cp, store)
    assert case.target.verify_restored(cp) == []
    assert case.state() == before


def test_a_shadow_built_from_the_checkpoint_is_faithful_and_observes_equal_to_it(case: KindCase, store: Store,
                                                                                 backend: str) -> None:
    cp = checkpoint(case, store)
    case.mutate(case.target.endpoint())  # the shadow is built from the checkpoint, not from production now

    with case.target.shadow(cp, store, RUN_ID, backend) as sh:
        assert sh.backend == backend
        assert sh.fidelity == []
        assert sh.changes() == []
        assert case.target.fingerprint(sh.observe()) == case.target.fingerprint(sh.observe()) == cp.fingerprint


def test_the_fingerprint_is_stable_while_nothing_changes(case: KindCase, store: Store) -> None:
    first, second = case.target.fingerprint(), case.target.fingerprint()
    assert first == second
    cp = checkpoint(case, store)
    assert case.target.fingerprint() == cp.fingerprint == first
    assert case.target.fingerprint(case.target.observe()) == first


def test_a_change_in_a_shadow_is_reported_with_the_addresses_the_same_change_on_production_gets(
        case: KindCase, store: Store) -> None:
    before = case.state()
    cp = checkpoint(case, store)
    with case.target.shadow(cp, store, RUN_ID, "local") as sh:
        case.mutate(sh.endpoint)
        in_shadow = addresses(sh.changes())
        assert case.changed <= in_shadow
        assert case.target.fingerprint(sh.observe()) != cp.fingerprint
        assert case.state() == before, "a change made in the shadow reached production"

        case.mutate(case.target.endpoint())
        assert addresses(case.target.changes_since(cp, sh)) == in_shadow


def test_the_rehearsed_rollback_brings_the_shadow_back_and_production_never_sees_either(case: KindCase,
                                                                                        store: Store) -> None:
    before = case.state()
    cp = checkpoint(case, store)
    with case.target.shadow(cp, store, RUN_ID, "local") as sh:
        case.mutate(sh.endpoint)
        assert sh.changes() != []

        assert sh.rehearse_rollback() == []  # every kind declares it (adapters.ShadowCopy)

        assert case.target.fingerprint(sh.observe()) == cp.fingerprint
        assert sh.changes() == []
        assert case.state() == before
    assert case.state() == before
    assert case.target.fingerprint() == cp.fingerprint
    assert case.target.verify_restored(cp) == []


def test_pruning_a_checkpoint_leaves_production_as_it_is(case: KindCase, store: Store) -> None:
    before = case.state()
    cp = checkpoint(case, store)

    said = REGISTRY[case.kind].prune(cp)

    assert isinstance(said, str)
    assert case.state() == before
    assert case.target.fingerprint() == cp.fingerprint
