"""What every verifier agent tool shares: a failure comes back to the agent as a message."""

from __future__ import annotations

from langchain_core.tools import BaseTool


class AgentTool(BaseTool):
    """A tool whose errors (`ToolException`) and invalid arguments are returned to the agent.

    The agent reads the message and can correct itself (another id, page or query) instead of
    the run failing.
    """

    handle_tool_error: bool = True
    handle_validation_error: bool = True
