"""A remote A2A agent as a capability of ours: a `python`-kind agent class that forwards
each task to the remote agent with the official a2a-sdk client.

```yaml
name: translator
capabilities: [text.translate]
entrypoint: actors.a2a_remote:A2ARemoteAgent
config:
  url: https://agents.example.com/translator     # its card: <url>/.well-known/agent-card.json
  skills: {text.translate: translate}            # optional: capability -> remote skill id
  auth_env: DAFNCK_SECRET_TRANSLATOR             # optional: env var holding the credential
                                                 # (DAFNCK_SECRET_* or in secret_env_allow)
```

The card is resolved on the first task (then kept); a task's input becomes the message
(`{"prompt": text}` a text part, anything else a data part), the remote task's artifacts
(or its reply message) become the output. A remote failure is the task's failure.

The agent connects only to addresses the platform's `outbound_allow` admits
(`cluster.netguard`): `config.url` is checked when the agent is applied, and every
connection (the card may name other URLs) when it is made.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from a2a.client import A2AClientError, Client, ClientConfig, ClientFactory
from a2a.helpers import get_message_text, new_message
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.types.a2a_pb2 import Task as A2ATask
from a2a.utils.errors import A2AError
from pydantic import BaseModel, ConfigDict, Field

from actors.a2a_wire import SKILL_KEY, input_parts, parts_output
from actors.skills import skill
from cluster import netguard
from cluster.contracts import Contract
from cluster.errors import OutboundRefused, SpecInvalid, TaskFailed
from cluster.outbound import outbound_policy

_DONE = frozenset({TaskState.TASK_STATE_COMPLETED})
_ENDED = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
        TaskState.TASK_STATE_INPUT_REQUIRED,
        TaskState.TASK_STATE_AUTH_REQUIRED,
    }
)
#: How often a task the remote agent answered early (still working) is looked at again.
POLL_S = 0.2


class A2ARemoteConfig(Contract):
    """The agent spec's `config` for a remote A2A agent."""

    url: str = Field(pattern=r"^https?://\S+$")
    #: capability -> the remote skill id sent as message metadata `skill`; empty: the
    #: agent's one capability, sent without a skill id.
    skills: dict[str, str] = {}
    #: The environment variable holding the credential (never the credential itself):
    #: `DAFNCK_SECRET_*` or one the operator lists in `secret_env_allow`.
    auth_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: The header carrying it; `Authorization` gets `Bearer <credential>`.
    auth_header: str = "Authorization"
    timeout_s: float = Field(default=300, gt=0)


class RemoteInput(BaseModel):
    """Any JSON object: the remote agent's card, not us, says what it accepts."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = None


class A2ARemoteAgent:
    """Forwards tasks to a remote A2A agent; one skill per mapped capability."""

    def __init__(self, **config: Any) -> None:
        """Raises: SpecInvalid (`config.url` at an address the platform does not allow)."""
        self.config = A2ARemoteConfig(**config)
        self._outbound = outbound_policy(None)
        problem = self._outbound.url_problem(self.config.url)
        if problem:
            raise SpecInvalid(f"A2A agent {self.config.url!r}", [f"config.url: {problem}"])
        self._headers = self._auth_headers()
        self._client: tuple[asyncio.AbstractEventLoop, Client, httpx.AsyncClient] | None = None
        if not self.config.skills:
            self.forward = skill()(self._forwarder(None))
        for index, (capability, remote) in enumerate(self.config.skills.items()):
            setattr(self, f"forward_{index}", skill(capability)(self._forwarder(remote)))

    def _auth_headers(self) -> dict[str, str]:
        """Raises: ValueError (the named variable is not set)."""
        name = self.config.auth_env
        if name is None:
            return {}
        secret = os.environ.get(name)
        if not secret:
            raise ValueError(f"environment variable {name!r} (config.auth_env) is not set")
        header = self.config.auth_header
        return {header: f"Bearer {secret}" if header.lower() == "authorization" else secret}

    def _forwarder(self, remote_skill: str | None) -> Any:
        async def forward(data: RemoteInput) -> Any:
            return await self.send(data.model_dump(exclude_none=True), remote_skill)

        return forward

    async def _connect(self) -> Client:
        """The client of this event loop (a replica has one), its card resolved once."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            http = httpx.AsyncClient(
                headers=self._headers,
                timeout=self.config.timeout_s,
                transport=netguard.guarded_transport(self._outbound),
            )
            factory = ClientFactory(ClientConfig(httpx_client=http, streaming=False))
            try:
                self._client = (loop, await factory.create_from_url(self.config.url), http)
            except BaseException:
                await http.aclose()
                raise
        return self._client[1]

    async def send(self, data: dict[str, Any], remote_skill: str | None = None) -> Any:
        """Send `data` as one message and return the remote answer.

        Raises:
            TaskFailed: the remote agent failed the task or cannot be reached (retryable).
        """
        message = new_message(input_parts(data), role=Role.ROLE_USER)
        if remote_skill:
            message.metadata.update({SKILL_KEY: remote_skill})
        try:
            client = await self._connect()
            last: StreamResponse | None = None
            async for event in client.send_message(SendMessageRequest(message=message)):
                last = event
            if last is not None and last.HasField("message"):
                return parts_output(list(last.message.parts))
            if last is None or not last.HasField("task"):
                raise TaskFailed(f"{self.config.url} answered neither a task nor a message")
            return self._output(await self._ended(client, last.task))
        except (A2AClientError, httpx.HTTPError, OutboundRefused) as exc:
            # Resolve the card again next time (tasks still using this client keep it).
            self._client = None
            refused = netguard.refused_in(exc)
            if refused is not None:  # the address: trying again will not help
                raise TaskFailed(
                    f"A2A agent {self.config.url}: {refused}", "OutboundRefused"
                ) from None
            raise TaskFailed(
                f"A2A agent {self.config.url}: {exc}", "A2AUnavailable", True
            ) from None
        except A2AError as exc:  # the remote agent refused the request itself
            raise TaskFailed(f"A2A agent {self.config.url}: {exc}", type(exc).__name__) from None

    async def _ended(self, client: Client, task: A2ATask) -> A2ATask:
        """The task once the remote agent has finished (or stopped for input) with it."""
        while task.status.state not in _ENDED:
            await asyncio.sleep(POLL_S)
            task = await client.get_task(GetTaskRequest(id=task.id))
        return task

    def _output(self, task: A2ATask) -> Any:
        state = task.status.state
        if state not in _DONE:
            why = get_message_text(task.status.message) if task.HasField("status") else ""
            name = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
            raise TaskFailed(f"A2A agent {self.config.url} task {name}: {why}", "A2ARemoteFailed")
        return parts_output([p for a in task.artifacts for p in a.parts])
