"""The scripted model: a test fixture and the demo's default model, not a real model.

An OpenAI-compatible Chat Completions server that replays a scenario file of assistant messages
with tool calls, checks that every request carries the results of the previous tool calls, and
fails loudly (HTTP 400 and an ERROR log line) on any request the scenario does not expect.
"""
