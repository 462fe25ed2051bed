"""The coding agent: a tool-calling loop that reaches the model only through the context sidecar."""
