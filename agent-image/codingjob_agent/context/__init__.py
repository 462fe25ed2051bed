"""The context-manager sidecar: model gateway, conversation store, token counting and pruning.

It runs next to the agent in every pod, holds the model API key and the conversation, and answers
the agent's ``POST /v1/step`` with the model's next assistant message (see ``protocol.py``).
"""
