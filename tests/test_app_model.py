"""The app model through the library: the samples' handler rules, validation messages,
idempotent dispatch, snapshots (equivalence under hypothesis), upcasters, time travel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from helpers import BANK_APP, USERS_APP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import PrivateAttr

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.errors import DecodeError, DomainError, NotFoundError, ValidationError
from cqrsctl.loader import load_app
from cqrsctl.services.aggregates import load
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.services.replay import history, replay, take_snapshot
from cqrsctl.store import NewEvent, Store

bank_app = load_app(BANK_APP)
users_app = load_app(USERS_APP)


def uid() -> str:
    return uuid.uuid4().hex[:12]


def balance(store: Store, account: str) -> Decimal:
    return Decimal(replay(store, bank_app, f"Account-{account}").state["balance"])


# -- the bank sample's rules ----------------------------------------------------------------


def test_bank_overdraft_limit(store: Store) -> None:
    d = Dispatcher(bank_app, store)
    d.dispatch("OpenAccount", {"account_id": "A-1", "owner": "Ada"})
    d.dispatch("Deposit", {"account_id": "A-1", "amount": "20"})
    d.dispatch("Withdraw", {"account_id": "A-1", "amount": "120"})  # exactly down to the limit
    assert balance(store, "A-1") == Decimal(-100)
    with pytest.raises(DomainError, match="overdraft limit"):
        d.dispatch("Withdraw", {"account_id": "A-1", "amount": "0.01"})
    assert store.stream_version("Account-A-1") == 3


def test_bank_close_needs_a_zero_balance_and_a_closed_account_takes_nothing(store: Store) -> None:
    d = Dispatcher(bank_app, store)
    d.dispatch("OpenAccount", {"account_id": "A-1", "owner": "Ada"})
    d.dispatch("Deposit", {"account_id": "A-1", "amount": "5"})
    with pytest.raises(DomainError, match="balance 5; it must be 0"):
        d.dispatch("CloseAccount", {"account_id": "A-1"})
    d.dispatch("Withdraw", {"account_id": "A-1", "amount": "5"})
    d.dispatch("CloseAccount", {"account_id": "A-1"})
    for command, data in (
        ("Deposit", {"account_id": "A-1", "amount": "1"}),
        ("Withdraw", {"account_id": "A-1", "amount": "1"}),
        ("CloseAccount", {"account_id": "A-1"}),
    ):
        with pytest.raises(DomainError, match="is closed"):
            d.dispatch(command, data)
    with pytest.raises(DomainError, match="already open"):
        d.dispatch("OpenAccount", {"account_id": "A-1", "owner": "Eve"})
    with pytest.raises(DomainError, match="not open"):
        d.dispatch("Deposit", {"account_id": "B-2", "amount": "1"})
    assert store.stream_version("Account-A-1") == 4
    assert store.stream_version("Account-B-2") == 0


@pytest.mark.parametrize(
    ("command", "data", "fields"),
    [
        ("OpenAccount", {"account_id": "", "owner": ""}, ["account_id", "owner"]),
        ("OpenAccount", {"account_id": "A 1", "owner": "x"}, ["account_id"]),
        ("Deposit", {"account_id": "A-1"}, ["amount"]),
        ("Deposit", {"account_id": "A-1", "amount": "0"}, ["amount"]),
        ("Withdraw", {"account_id": "A-1", "amount": "1", "note": "x"}, ["note"]),
        ("CloseAccount", {}, ["account_id"]),
    ],
)
def test_bank_validation_errors_name_the_fields(
    store: Store, command: str, data: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(ValidationError) as err:
        Dispatcher(bank_app, store).dispatch(command, data)
    message = str(err.value)
    assert message.startswith(f"{command}: ")
    for name in fields:
        assert f"{name}: " in message
    assert store.head() == 0


def test_unknown_command(store: Store) -> None:
    with pytest.raises(NotFoundError, match="unknown command 'Nope'"):
        Dispatcher(bank_app, store).dispatch("Nope", {})


# -- the users sample's rules ---------------------------------------------------------------


def test_users_email_is_a_validated_value_object(store: Store) -> None:
    d = Dispatcher(users_app, store)
    for bad in ("not-an-email", "a@b", "two@@example.org", "x" * 250 + "@example.org"):
        with pytest.raises(ValidationError, match="email: .*not a valid email"):
            d.dispatch("RegisterUser", {"user_id": "U-1", "email": bad, "name": "X"})
    d.dispatch("RegisterUser", {"user_id": "U-1", "email": "  Ada@Example.ORG ", "name": "Ada"})
    state = replay(store, users_app, "User-U-1").state
    assert state["email"] == "ada@example.org"
    with pytest.raises(DomainError, match="already registered"):
        d.dispatch("RegisterUser", {"user_id": "U-1", "email": "ada@example.org", "name": "Ada"})


def test_users_change_role_rules(store: Store) -> None:
    d = Dispatcher(users_app, store)
    with pytest.raises(DomainError, match="not registered"):
        d.dispatch("ChangeRole", {"user_id": "U-1", "role": "admin"})
    d.dispatch("RegisterUser", {"user_id": "U-1", "email": "u1@example.org", "name": "U"})
    with pytest.raises(DomainError, match="must be active"):
        d.dispatch("ChangeRole", {"user_id": "U-1", "role": "admin"})
    d.dispatch("VerifyUser", {"user_id": "U-1"})
    assert d.dispatch("VerifyUser", {"user_id": "U-1"}).event_ids == []  # verifying twice changes nothing
    with pytest.raises(DomainError, match="already has role user"):
        d.dispatch("ChangeRole", {"user_id": "U-1", "role": "user"})
    with pytest.raises(ValidationError, match="role: "):
        d.dispatch("ChangeRole", {"user_id": "U-1", "role": "root"})
    d.dispatch("ChangeRole", {"user_id": "U-1", "role": "admin"})
    with pytest.raises(DomainError, match="already has role admin"):
        d.dispatch("ChangeRole", {"user_id": "U-1", "role": "admin"})
    changed = store.read_stream("User-U-1")[-1]
    assert (changed.event_type, changed.data) == ("RoleChanged", {"old_role": "user", "new_role": "admin"})
    assert replay(store, users_app, "User-U-1").state["role"] == "admin"


# -- idempotency and metadata -------------------------------------------------------------------


def test_redispatch_with_the_same_id_returns_the_first_result(store: Store) -> None:
    d = Dispatcher(bank_app, store)
    first = d.dispatch("OpenAccount", {"account_id": "A-1", "owner": "Ada"}, command_id="open-1")
    head = store.head()
    for dispatcher in (d, Dispatcher(bank_app, store)):  # also from a fresh dispatcher (no cache)
        again = dispatcher.dispatch("OpenAccount", {"account_id": "A-1", "owner": "Ada"}, command_id="open-1")
        assert again.duplicate and not first.duplicate
        assert (again.event_ids, again.positions, again.version) == (
            first.event_ids,
            first.positions,
            first.version,
        )
    assert store.head() == head
    # A command whose handler decides nothing is remembered too.
    users = Dispatcher(users_app, store)
    users.dispatch("RegisterUser", {"user_id": "U-1", "email": "u@example.org", "name": "U"})
    users.dispatch("VerifyUser", {"user_id": "U-1"}, command_id="v-1")
    noop = users.dispatch("VerifyUser", {"user_id": "U-1"}, command_id="v-2")
    assert noop.event_ids == [] and not noop.duplicate
    assert users.dispatch("VerifyUser", {"user_id": "U-1"}, command_id="v-2").duplicate


def test_metadata_of_dispatched_events(store: Store) -> None:
    d = Dispatcher(bank_app, store, actor="ops")
    d.dispatch(
        "OpenAccount",
        {"account_id": "A-1", "owner": "Ada"},
        command_id="c-1",
        metadata={"correlation_id": "flow-7", "tenant": "t1"},
    )
    d.dispatch(
        "Deposit",
        {"account_id": "A-1", "amount": "1"},
        command_id="c-2",
        metadata={"correlation_id": "flow-7", "causation_id": "c-1", "actor": "ada"},
    )
    opened, deposited = (e.metadata for e in store.read_stream("Account-A-1"))
    assert opened == {
        "command_id": "c-1",
        "command": "OpenAccount",
        "correlation_id": "flow-7",
        "causation_id": "c-1",
        "actor": "ops",
        "tenant": "t1",
    }
    assert deposited == {
        "command_id": "c-2",
        "command": "Deposit",
        "correlation_id": "flow-7",
        "causation_id": "c-1",
        "actor": "ada",
    }


# -- snapshots --------------------------------------------------------------------------------

snap_app = load_app(BANK_APP)  # its own App object: a snapshot every 3 events
snap_app.snapshot_every = 3
EVERY = 3

operation = st.tuples(
    st.sampled_from(["open", "deposit", "withdraw", "close"]),
    st.integers(min_value=0, max_value=1),  # which of two accounts
    st.integers(min_value=1, max_value=15_000).map(lambda cents: Decimal(cents) / 100),
)


def model_apply(model: dict[str, Any] | None, kind: str, amount: Decimal) -> dict[str, Any] | None:
    """The bank's rules, written again plainly: the new state, or None when rejected."""
    if kind == "open":
        return None if model is not None else {"balance": Decimal(0), "closed": False, "version": 1}
    if model is None or model["closed"]:
        return None
    if kind == "deposit":
        return {**model, "balance": model["balance"] + amount, "version": model["version"] + 1}
    if kind == "withdraw":
        if model["balance"] - amount < -100:
            return None
        return {**model, "balance": model["balance"] - amount, "version": model["version"] + 1}
    if model["balance"] != 0:
        return None
    return {**model, "closed": True, "version": model["version"] + 1}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=24))
def test_state_with_snapshots_equals_state_without(store: Store, ops: list[tuple[str, int, Decimal]]) -> None:
    accounts = [uid(), uid()]  # fresh streams per example, one store for all of them
    models: dict[str, dict[str, Any] | None] = dict.fromkeys(accounts)
    dispatcher = Dispatcher(snap_app, store)
    commands = {"open": "OpenAccount", "deposit": "Deposit", "withdraw": "Withdraw", "close": "CloseAccount"}
    for kind, which, amount in ops:
        acc = accounts[which]
        data: dict[str, Any] = {"account_id": acc}
        if kind == "open":
            data["owner"] = "Ada"
        elif kind in ("deposit", "withdraw"):
            data["amount"] = str(amount)
        expected = model_apply(models[acc], kind, amount)
        if expected is None:
            with pytest.raises(DomainError):
                dispatcher.dispatch(commands[kind], data)
        else:
            dispatcher.dispatch(commands[kind], data)
            models[acc] = expected
    for acc, model in models.items():
        stream = f"Account-{acc}"
        if model is None:
            assert store.stream_version(stream) == 0
            continue
        with_snap = replay(store, snap_app, stream)
        without = replay(store, snap_app, stream, use_snapshot=False)
        assert with_snap.to_dict() == without.to_dict()
        assert (Decimal(without.state["balance"]), without.state["closed"], without.version) == (
            model["balance"],
            model["closed"],
            model["version"],
        )
        with store.reader() as tx:
            snap = tx.snapshots.load(stream)
        if model["version"] >= EVERY:
            assert snap is not None and snap.version == model["version"] // EVERY * EVERY
            # Every version replays the same from a snapshot (when usable) as from the start.
            for v in range(1, model["version"] + 1):
                assert (
                    replay(store, snap_app, stream, at_version=v).state
                    == replay(store, snap_app, stream, at_version=v, use_snapshot=False).state
                )
        else:
            assert snap is None


def test_snapshot_of_an_older_aggregate_shape_is_ignored(store: Store) -> None:
    class Counter(Aggregate, category="Counter"):
        n: int = 0

        def when_Added(self, e: Any) -> None:
            self.n += e.data["by"]

    class CounterV2(Aggregate, category="Counter"):  # the same stream type, one more field
        n: int = 0
        adds: int = 0

        def when_Added(self, e: Any) -> None:
            self.n += e.data["by"]
            self.adds += 1

    assert Counter.snapshot_schema != CounterV2.snapshot_schema
    old, new = App("c1", snapshot_every=1), App("c2", snapshot_every=1)
    old.aggregate(Counter)
    new.aggregate(CounterV2)
    store.append("Counter-1", [NewEvent("Added", {"by": 2}), NewEvent("Added", {"by": 3})])
    take_snapshot(store, old, "Counter-1")
    assert replay(store, new, "Counter-1").state == {"n": 5, "adds": 2}  # rebuilt, not read from the old one


# -- upcasters ----------------------------------------------------------------------------------

up_app = App("up")


class PriceSet(Event, schema_version=2):
    cents: int
    currency: str


class Product(Aggregate, category="Product"):
    cents: int = 0
    currency: str = ""

    def when_PriceSet(self, e: PriceSet) -> None:
        self.cents, self.currency = e.cents, e.currency


@up_app.command(aggregate=Product, stream=lambda c: c.sku)
class SetPrice(Command):
    sku: str
    cents: int

    def handle(self, product: Product) -> list[Event]:
        return [PriceSet(cents=self.cents, currency=product.currency or "EUR")]


@up_app.upcaster("PriceSet", from_version=1)
def _euros_to_cents(data: dict[str, Any]) -> dict[str, Any]:
    return {"cents": round(float(data["euros"]) * 100), "currency": "EUR"}


def test_upcaster_round_trip(store: Store) -> None:
    store.append("Product-p1", [NewEvent("PriceSet", {"euros": "1.25"}, schema_version=1)])
    [stored] = store.read_stream("Product-p1")
    decoded = up_app.decode(stored)
    assert isinstance(decoded, PriceSet) and (decoded.cents, decoded.currency) == (125, "EUR")
    assert replay(store, up_app, "Product-p1").state == {"cents": 125, "currency": "EUR"}
    assert [s.state["cents"] for s in history(store, up_app, "Product-p1")] == [125]
    result = Dispatcher(up_app, store).dispatch("SetPrice", {"sku": "p1", "cents": 300})
    assert result.version == 2
    newest = store.read_stream("Product-p1")[-1]
    assert (newest.schema_version, newest.data) == (2, {"cents": 300, "currency": "EUR"})
    assert store.read_stream("Product-p1")[0].data == {"euros": "1.25"}  # stored events stay as they were


def test_upcaster_failure_names_the_position(store: Store) -> None:
    store.append("Product-p2", [NewEvent("PriceSet", {"cents": 1, "currency": "EUR"}, schema_version=2)])
    bad = store.append("Product-p2", [NewEvent("PriceSet", {"price": "x"}, schema_version=1)]).positions[0]
    with pytest.raises(DecodeError, match=f"position {bad} .*could not be upcast: KeyError"):
        replay(store, up_app, "Product-p2")
    with pytest.raises(DecodeError, match=f"position {bad}"):
        Dispatcher(up_app, store).dispatch("SetPrice", {"sku": "p2", "cents": 5})
    assert store.stream_version("Product-p2") == 2
    assert replay(store, up_app, "Product-p2", at_version=1).state["cents"] == 1


def test_undecodable_events_name_the_position_without_upcasters(store: Store) -> None:
    # bank_app has no upcasters, so replay and dispatch fold its streams from FoldRows.
    d = Dispatcher(bank_app, store)
    d.dispatch("OpenAccount", {"account_id": "D-1", "owner": "Ada"})
    bad = store.append("Account-D-1", [NewEvent("MoneyDeposited", {"amount": "lots"})]).positions[0]
    with pytest.raises(DecodeError, match=f"position {bad} \\(MoneyDeposited.*cannot be decoded: amount"):
        replay(store, bank_app, "Account-D-1")
    with pytest.raises(DecodeError, match=f"position {bad}"):
        d.dispatch("Deposit", {"account_id": "D-1", "amount": "1"})
    d.dispatch("OpenAccount", {"account_id": "D-2", "owner": "Eve"})
    newer = store.append(
        "Account-D-2", [NewEvent("MoneyDeposited", {"amount": "1"}, schema_version=2)]
    ).positions[0]
    with pytest.raises(DecodeError, match=f"position {newer} .*schema version 2"):
        replay(store, bank_app, "Account-D-2")
    assert replay(store, bank_app, "Account-D-2", at_version=1).state["owner"] == "Eve"


class Tally(Aggregate, category="Tally"):
    count: int = 0
    _note: str = PrivateAttr("kept")

    def when_Counted(self, e: Counted) -> None:
        self.count += 1


class Counted(Event):
    pass


def test_an_aggregate_keeps_its_own_private_attributes(store: Store) -> None:
    tally = App("tally")
    tally.aggregate(Tally)
    store.append("Tally-t1", [NewEvent("Counted", {}), NewEvent("Counted", {})])
    with store.reader() as tx:
        agg = load(tally, tx, Tally, "Tally-t1")
    assert (agg.count, agg.version, agg.stream_id, agg._note) == (2, 2, "Tally-t1", "kept")
    fresh = Tally()
    assert (fresh.version, fresh.exists, fresh.stream_id, fresh._note) == (0, False, "", "kept")


# -- time travel ----------------------------------------------------------------------------


def wait_for_clock_past(instant: datetime) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while (now := datetime.now(UTC)) <= instant:
        assert now < deadline, "wall clock did not advance"


def test_as_of_replays_the_past_even_with_a_newer_snapshot(store: Store) -> None:
    d = Dispatcher(snap_app, store)
    d.dispatch("OpenAccount", {"account_id": "T-1", "owner": "Ada"})
    d.dispatch("Deposit", {"account_id": "T-1", "amount": "10"})
    moment = store.read_stream("Account-T-1")[-1].recorded_at
    wait_for_clock_past(moment)
    for _ in range(4):
        d.dispatch("Deposit", {"account_id": "T-1", "amount": "1"})
    with store.reader() as tx:
        assert tx.snapshots.load("Account-T-1") is not None
    past = replay(store, snap_app, "Account-T-1", as_of=moment)
    assert (past.version, past.state["balance"]) == (2, "10")
    assert replay(store, snap_app, "Account-T-1").state["balance"] == "14"
    with pytest.raises(NotFoundError, match="no events as of"):
        replay(store, snap_app, "Account-T-1", as_of=moment - timedelta(days=1))
