"""Scripted chat models for offline tests.

A `ScriptedChatModel` answers each call with the first rule whose pattern is found in the
prompt, so replies do not depend on the order in which concurrent branches call it. Tool calls
and structured output both work: `bind_tools` returns the model itself and a structured reply is
an AIMessage calling a tool named after the schema, which LangChain's default
`with_structured_output` parses.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

Reply = AIMessage | str | Callable[[list[BaseMessage]], AIMessage | str]


def tool_call(name: str, **args: Any) -> AIMessage:
    """A reply that calls one tool (or answers with a structured schema named `name`)."""
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}"}],
    )


structured = tool_call


@dataclass
class Rule:
    """Reply with `reply` when `pattern` (a regex) is found in the prompt.

    `after_tool`: None matches any prompt; True only prompts that already hold a tool result
    (the agent's second turn); False only prompts without one.
    `times`: how often the rule may fire (None: always).
    """

    pattern: str
    reply: Reply
    after_tool: bool | None = None
    times: int | None = None
    fired: int = field(default=0, init=False)

    def matches(self, transcript: str, has_tool_result: bool) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.after_tool is not None and self.after_tool != has_tool_result:
            return False
        return re.search(self.pattern, transcript, flags=re.S | re.I) is not None


def transcript_of(messages: Sequence[BaseMessage]) -> str:
    return "\n".join(f"[{m.type}] {m.text}" for m in messages)


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model driven by pattern rules instead of a fixed message sequence."""

    messages: Any = iter(())
    rules: list[Any] = []  # list[Rule]; untyped so pydantic does not coerce replies
    default: Any = None  # a Reply used when no rule matches
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """Every prompt this model received, in order."""
        return self._calls

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        transcript = transcript_of(messages)
        has_tool_result = any(isinstance(m, ToolMessage) for m in messages)
        with self._lock:
            self._calls.append(list(messages))
            reply: Reply | None = self.default
            for rule in self.rules:
                if rule.matches(transcript, has_tool_result):
                    rule.fired += 1
                    reply = rule.reply
                    break
        if reply is None:
            raise AssertionError(f"no scripted reply for prompt:\n{transcript[-1500:]}")
        if callable(reply) and not isinstance(reply, AIMessage):
            reply = reply(messages)
        message = AIMessage(content=reply) if isinstance(reply, str) else reply.model_copy()
        message.id = message.id or f"run-{uuid.uuid4().hex[:12]}"
        message.usage_metadata = {
            "input_tokens": len(transcript.split()),
            "output_tokens": max(1, len(message.text.split()) + 8 * len(message.tool_calls)),
            "total_tokens": len(transcript.split())
            + max(1, len(message.text.split()) + 8 * len(message.tool_calls)),
        }
        return ChatResult(generations=[ChatGeneration(message=message)])
