"""TaskCraft on LangGraph: automated generation of verified agentic tasks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("langgraph-taskcraft")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
