"""langgraph_taskcraft/loaders."""
