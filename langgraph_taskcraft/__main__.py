"""`python -m langgraph_taskcraft` is the `taskcraft` command."""

from langgraph_taskcraft.cli import app

app(prog_name="taskcraft")
