"""Users sample: register (with an email value object), verify, change role."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.errors import DomainError
from cqrsctl.projection import Projection, Table
from cqrsctl.saga import Saga, Step

app = App("users")

_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")


def _email(value: str) -> str:
    value = value.strip().lower()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not a valid email address")
    return value


Email = Annotated[str, AfterValidator(_email)]
"""An email address, normalised to lower case; invalid ones fail validation."""


class Role(StrEnum):
    user = "user"
    moderator = "moderator"
    admin = "admin"


class UserRegistered(Event):
    email: Email
    name: str


class UserVerified(Event):
    pass


class RoleChanged(Event):
    old_role: Role
    new_role: Role


class User(Aggregate, category="User"):
    email: str = ""
    name: str = ""
    role: Role = Role.user
    active: bool = False
    activated: bool = False

    def when_UserRegistered(self, e: UserRegistered) -> None:
        self.email, self.name = e.email, e.name

    def when_UserVerified(self, e: UserVerified) -> None:
        self.active = True

    def when_RoleChanged(self, e: RoleChanged) -> None:
        self.role = e.new_role

    def when_UserActivated(self, e: Any) -> None:
        self.activated = True


def _user(c: Any) -> str:
    return str(c.user_id)


@app.command(aggregate=User, stream=_user)
class RegisterUser(Command):
    user_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    email: Email
    name: str = Field(min_length=1, max_length=200)

    def handle(self, user: User) -> list[Event]:
        if user.exists:
            raise DomainError(f"user {user.stream_id} is already registered")
        return [UserRegistered(email=self.email, name=self.name)]


@app.command(aggregate=User, stream=_user)
class VerifyUser(Command):
    user_id: str

    def handle(self, user: User) -> list[Event]:
        if not user.exists:
            raise DomainError(f"user {user.stream_id} is not registered")
        if user.active:
            return []  # verifying twice changes nothing
        return [UserVerified()]


@app.command(aggregate=User, stream=_user)
class ChangeRole(Command):
    user_id: str
    role: Role

    def handle(self, user: User) -> list[Event]:
        if not user.exists:
            raise DomainError(f"user {user.stream_id} is not registered")
        if not user.active:
            raise DomainError(f"user {user.stream_id} must be active (verified) to change role")
        if user.role == self.role:
            raise DomainError(f"user {user.stream_id} already has role {self.role.value}")
        return [RoleChanged(old_role=user.role, new_role=self.role)]


@app.query()
def user(ctx: Any, user_id: str) -> dict[str, Any]:
    """One user's current state."""
    state = ctx.load(f"User-{user_id}")
    return {"user_id": user_id, **state.state(), "version": state.version}


# -- verification: a saga sends the email, reminds after a day, activates on verification --


class VerificationEmailSent(Event):
    email: str


class VerificationReminderSent(Event):
    email: str


class UserActivated(Event):
    pass


@app.command(aggregate=User, stream=_user)
class SendVerificationEmail(Command):
    user_id: str

    def handle(self, user: User) -> list[Event]:
        if not user.exists:
            raise DomainError(f"user {user.stream_id} is not registered")
        return [VerificationEmailSent(email=user.email)]


@app.command(aggregate=User, stream=_user)
class SendVerificationReminder(Command):
    user_id: str

    def handle(self, user: User) -> list[Event]:
        if not user.exists:
            raise DomainError(f"user {user.stream_id} is not registered")
        return [] if user.active else [VerificationReminderSent(email=user.email)]


@app.command(aggregate=User, stream=_user)
class ActivateUser(Command):
    user_id: str

    def handle(self, user: User) -> list[Event]:
        if not user.active:
            raise DomainError(f"user {user.stream_id} is not verified")
        return [] if user.activated else [UserActivated()]


@app.saga(starts_on=UserRegistered)
class Verification(Saga):
    """send_verification → await_verification (a reminder after 24 h) → activate."""

    user_id: str = ""

    def start(self, event: Any) -> None:
        self.user_id = self.saga_key.removeprefix("User-")

    steps = [
        Step("send_verification", do=lambda s: SendVerificationEmail(user_id=s.user_id)),
        Step(
            "await_verification",
            wait_for=UserVerified,
            timeout=timedelta(hours=24),
            on_timeout=lambda s: SendVerificationReminder(user_id=s.user_id),
        ),
        Step("activate", do=lambda s: ActivateUser(user_id=s.user_id)),
    ]


# -- read side: the user list ------------------------------------------------------------------


class UserList(Projection, name="user_list", version=1):
    """One row per user: email, name, role, whether verified, when registered."""

    tables = {
        "user_list": Table(
            {
                "user_id": "text", "email": "text", "name": "text", "role": "text", "active": "bool",
                "registered_at": "timestamp", "updated_position": "int",
            },
            key=["user_id"],
            indexes=[["email"]],
        )
    }  # fmt: skip

    def on_UserRegistered(self, event: Any, rm: Any) -> None:
        rm.upsert("user_list", {
            "user_id": event.aggregate_id, "email": event.data["email"], "name": event.data["name"],
            "role": Role.user.value, "active": False, "registered_at": event.recorded_at,
            "updated_position": event.position,
        })  # fmt: skip

    def on_UserVerified(self, event: Any, rm: Any) -> None:
        rm.update(
            "user_list", {"user_id": event.aggregate_id, "active": True, "updated_position": event.position}
        )

    def on_RoleChanged(self, event: Any, rm: Any) -> None:
        rm.update("user_list", {
            "user_id": event.aggregate_id, "role": event.data["new_role"], "updated_position": event.position,
        })  # fmt: skip


app.projection(UserList)


@app.query()
def users(ctx: Any, role: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Users from the `user_list` projection (optionally only those with `role`)."""
    where = {"role": role} if role else {}
    return ctx.all("user_list", order_by=["user_id"], limit=limit, **where)  # type: ignore[no-any-return]
